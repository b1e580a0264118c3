"""Tests for infoprompt.model on the embedded MiniLM: which parts each Method trains, where the
gradients go, and that a real training run leaves the frozen encoder bit-identical."""

from __future__ import annotations

import math

import pytest
import torch

from infoprompt.batching import pad
from infoprompt.config import InfoPromptConfig, Method
from infoprompt.encoder import load_tokenizer
from infoprompt.model import InfoPromptModel
from infoprompt.template import Template, prompt_free_ids
from infoprompt.train import Training

pytestmark = pytest.mark.usefixtures("torch_one_thread")

HIDDEN = 384
CRITICS = {"f_mu", "f_sigma", "critic_rep", "critic_head"}
GENERATOR_METHODS = (Method.INFOPROMPT, Method.GAMMA0, Method.BETA0, Method.PRED_ONLY)

# method -> top-level parts whose parameters train
TRAINABLE = {
    **{m: {"generator", "head"} | CRITICS for m in GENERATOR_METHODS},
    Method.IDPG: {"generator", "head"},
    Method.WARP: {"free_prompts", "head"},
    Method.ADAPTER: {"adapters", "head"},
    Method.FINETUNE: {"encoder", "head"},
}

# method -> parts the loss actually reaches (a zero-weighted term gives zero gradients)
USED = {
    Method.INFOPROMPT: {"generator", "head"} | CRITICS,
    Method.GAMMA0: {"generator", "head", "f_mu", "f_sigma", "critic_rep"},
    Method.BETA0: {"generator", "head", "critic_head"},
    Method.PRED_ONLY: {"generator", "head"},
    Method.IDPG: {"generator", "head"},
    Method.WARP: {"free_prompts", "head"},
    Method.ADAPTER: {"adapters", "head"},
    Method.FINETUNE: {"encoder", "head"},
}


def _part(name: str) -> str:
    return name.split(".")[0]


def _config(method: Method, **changes) -> InfoPromptConfig:
    return InfoPromptConfig(task="demo", shots=16, epochs=1, method=method, device="cpu",
                            bottleneck=16, **changes)


def test_tables_cover_every_method() -> None:
    assert set(TRAINABLE) == set(USED) == set(Method)


# --- which parameters train --------------------------------------------------------------


@pytest.mark.parametrize("method", list(Method))
def test_trainable_parameters(method: Method, minilm_encoder) -> None:
    model = InfoPromptModel(_config(method), minilm_encoder, num_labels=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {_part(n) for n in trainable} == TRAINABLE[method]
    encoder_flags = {p.requires_grad for p in model.encoder.parameters()}
    assert encoder_flags == ({True} if method is Method.FINETUNE else {False})
    # the embeddings are part of the encoder, frozen with it
    assert model.encoder.get_input_embeddings().weight.requires_grad is (method is Method.FINETUNE)
    # a checkpoint carries exactly what trains
    assert set(model.trainable_state()) == trainable
    # parts a method does not use do not exist at all
    assert (model.generator is not None) == method.uses_generator
    assert (model.free_prompts is not None) == (method is Method.WARP)
    assert (model.adapters is not None) == (method is Method.ADAPTER)
    assert all(hasattr(model, name) == method.uses_critics for name in CRITICS)
    assert model.head.in_features == HIDDEN and model.head.out_features == 2


def test_generator_shapes(minilm_encoder) -> None:
    model = InfoPromptModel(_config(Method.INFOPROMPT, n_prompts=3), minilm_encoder, 2)
    generator = model.generator
    assert generator.down.shape == (3, HIDDEN, 16) and generator.up.shape == (3, 16, HIDDEN)
    prompts = model.prompts(torch.randn(5, HIDDEN))
    assert prompts.shape == (5, 3, HIDDEN)
    # one down/up pair per prompt: P' moves each prompt differently
    assert not torch.allclose(prompts[:, 0] - generator.up_bias[0],
                              prompts[:, 1] - generator.up_bias[1])
    # prompts start among real token embeddings (WARP's start), not at zero
    rows = model.encoder.get_input_embeddings().weight
    for bias in generator.up_bias:
        assert (rows - bias).abs().amax(1).min() == 0


# --- the prompted pass on MiniLM ---------------------------------------------------------


def _batch(method: Method, texts: list[list[str]], n_prompts: int = 4):
    tokenizer = load_tokenizer("minilm")
    template = Template.for_tokenizer(tokenizer, n_prompts=n_prompts, max_length=64)
    encoded = [template.encode(tokenizer, t) for t in texts]
    ids = [e.input_ids for e in encoded]
    mask_pos = torch.tensor([e.mask_pos for e in encoded])
    if not method.uses_prompts:
        ids, mask_pos = [prompt_free_ids(row, n_prompts) for row in ids], mask_pos - n_prompts
    input_ids, attention = pad(ids)
    return input_ids, attention, mask_pos


@pytest.mark.parametrize("method", list(Method))
def test_forward_z_is_the_mask_state(method: Method, minilm_encoder, minilm_encoder_pristine
                                     ) -> None:
    torch.manual_seed(0)
    model = InfoPromptModel(_config(method), minilm_encoder, num_labels=3)
    input_ids, attention, mask_pos = _batch(method, [["a fine film"], ["it is bad", "no"]])
    p_free = torch.randn(2, HIDDEN)
    with torch.no_grad():
        z, logits, prompts = model(input_ids, attention, mask_pos, p_free)
        assert z.shape == (2, HIDDEN) and logits.shape == (2, 3)
        torch.testing.assert_close(logits, model.head(z))
        embeds = minilm_encoder_pristine.get_input_embeddings()(input_ids)
        if method.uses_prompts:
            assert prompts.shape == (2, 4, HIDDEN)
            embeds = embeds.clone()
            embeds[:, 1:5] = prompts
        else:
            assert prompts is None
        # at the start every method computes the frozen encoder at the mask (adapters
        # start as the identity)
        hidden = minilm_encoder_pristine(inputs_embeds=embeds,
                                         attention_mask=attention).last_hidden_state
        torch.testing.assert_close(z, hidden[torch.arange(2), mask_pos], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", [Method.INFOPROMPT, Method.WARP, Method.ADAPTER])
def test_trainable_parts_move_z(method: Method, minilm_encoder) -> None:
    torch.manual_seed(0)
    model = InfoPromptModel(_config(method), minilm_encoder, num_labels=2)
    input_ids, attention, mask_pos = _batch(method, [["a fine film"], ["it is bad"]])
    p_free = torch.randn(2, HIDDEN)
    with torch.no_grad():
        z, _, _ = model(input_ids, attention, mask_pos, p_free)
        if method is Method.ADAPTER:
            model.adapters[2].up.weight.normal_(0, 0.1)  # the hooks are really applied
        elif method is Method.WARP:
            model.free_prompts[1].normal_(0, 1.0)
        else:
            model.generator.up_bias[1].normal_(0, 1.0)
        moved, _, _ = model(input_ids, attention, mask_pos, p_free)
    assert (moved - z).abs().max() > 1e-3


# --- gradients after one backward --------------------------------------------------------


@pytest.mark.parametrize("method", list(Method))
def test_gradients_reach_exactly_the_trained_parts(method: Method, demo_splits_16) -> None:
    training = Training(_config(method), demo_splits_16)
    model = training.model
    batch = training.batch(training.train_data, list(range(8)))
    out = training.losses(batch)
    assert torch.isfinite(out["loss"])
    if method.uses_critics:
        assert out["nce_rep"].item() > 0 and out["nce_head"].item() > 0
    else:
        assert out["nce_rep"].item() == out["nce_head"].item() == 0.0
    out["loss"].backward()

    for name, param in model.named_parameters():
        part = _part(name)
        if not param.requires_grad:
            assert param.grad is None, name
            continue
        assert part in TRAINABLE[method], name
        if part not in USED[method]:  # a zero-weighted loss term reaches nothing
            assert param.grad is None or not param.grad.any(), name
        elif part in ("encoder", "adapters"):
            assert param.grad is not None, name
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    if method is Method.ADAPTER:  # up starts at zero: its gradient is what starts training
        for adapter in model.adapters:
            assert adapter.up.weight.grad.abs().sum() > 0
    if method is Method.FINETUNE:
        encoder = model.encoder
        assert encoder.get_input_embeddings().weight.grad.abs().sum() > 0
        assert encoder.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


# --- a real training run -----------------------------------------------------------------


@pytest.mark.parametrize("method", list(Method))
def test_training_keeps_the_encoder_bit_identical(method: Method, demo_splits_16,
                                                  minilm_encoder_pristine) -> None:
    training = Training(_config(method), demo_splits_16)
    model = training.model
    assert training.steps_per_epoch == 2
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    records = list(training.epochs())

    assert [r["epoch"] for r in records] == [1]
    record = records[0]
    assert all(math.isfinite(record[k]) for k in ("loss", "loss_pred", "nce_rep", "nce_head"))
    assert 0 <= record["valid_metric"] <= 1

    pristine = minilm_encoder_pristine.state_dict()
    after = model.encoder.state_dict()
    assert set(after) == set(pristine)
    same = {name for name in pristine if torch.equal(after[name], pristine[name])}
    if method is Method.FINETUNE:
        changed = set(pristine) - same
        assert "embeddings.word_embeddings.weight" in changed
        assert any(name.startswith("encoder.layer.5.") for name in changed)
    else:
        # every tensor of Φ, embeddings and buffers included, bit for bit
        assert same == set(pristine)
        assert not any(p.requires_grad for p in model.encoder.parameters())

    # ... while what trains did move
    params = dict(model.named_parameters())
    moved = {name for name, value in before.items() if not torch.equal(params[name], value)}
    assert {_part(n) for n in moved} >= USED[method] - {"encoder"}
    for name in before:
        if _part(name) in ("generator", "free_prompts", "head"):
            assert name in moved, name


# --- the VIB bottleneck ------------------------------------------------------------------


@pytest.mark.parametrize("method", [Method.INFOPROMPT, Method.IDPG])
def test_vib_head_reads_a_sample_in_training_and_mu_at_evaluation(method: Method,
                                                                  minilm_encoder) -> None:
    torch.manual_seed(0)
    model = InfoPromptModel(_config(method, vib=0.1), minilm_encoder, num_labels=2)
    input_ids, attention, mask_pos = _batch(method, [["a fine film"], ["it is bad", "no"]])
    p_free, noise = torch.randn(2, HIDDEN), torch.randn(2, HIDDEN)
    with torch.no_grad():
        z, sampled, _ = model(input_ids, attention, mask_pos, p_free, noise)
        z_eval, logits, _ = model(input_ids, attention, mask_pos, p_free)
        _, again, _ = model(input_ids, attention, mask_pos, p_free)
        torch.testing.assert_close(z_eval, z)  # Z itself is not the bottleneck
        assert torch.equal(logits, again)  # evaluation is deterministic
        if not method.uses_critics:  # no f_μ, f_σ: vib weighs nothing, the head reads Z
            torch.testing.assert_close(sampled, model.head(z))
            torch.testing.assert_close(logits, model.head(z))
            return
        mu = model.f_mu(z)
        sigma = model.f_sigma(z).clamp(-2.0, 2.0).exp()
        torch.testing.assert_close(sampled, model.head(mu + sigma * noise))
        torch.testing.assert_close(logits, model.head(mu))
        assert (sampled - logits).abs().max() > 1e-3
