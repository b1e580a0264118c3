"""Tests for infoprompt.template on a BERT (MiniLM WordPiece) and a RoBERTa (byte-level BPE)
tokenizer, and the prompted pass of InfoPromptModel through a small RoBERTa encoder."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

from infoprompt.batching import pad
from infoprompt.config import InfoPromptConfig
from infoprompt.model import InfoPromptModel
from infoprompt.template import Template, TemplateError

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TOKENIZERS = ["minilm_tokenizer", "roberta_tokenizer"]
SHORT_A = "the quick brown fox"
SHORT_B = "jumps over the lazy dog"
LONG_A = " ".join(["the quick brown fox jumps over the lazy dog"] * 8)
LONG_B = " ".join(["she sells sea shells by the sea shore"] * 8)


@pytest.fixture(params=TOKENIZERS)
def tokenizer(request):
    return request.getfixturevalue(request.param)


def _text_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _frame(tokenizer) -> tuple[int, int]:
    """The ids a BERT ([CLS] … [SEP]) or RoBERTa (<s> … </s>) input starts and ends with."""
    ids = tokenizer("fox")["input_ids"]
    return ids[0], ids[-1]


def _check_frame(template: Template, tokenizer, ids: list[int], mask_pos: int) -> None:
    start, end = _frame(tokenizer)
    n_p = template.n_prompts
    assert ids[0] == start == template.cls_id
    assert ids[-1] == end == template.sep_id
    assert ids[1:1 + n_p] == [template.prompt_id] * n_p
    assert ids[mask_pos] == tokenizer.mask_token_id
    assert ids.count(tokenizer.mask_token_id) == 1
    assert ids.count(start) == 1 and ids.count(end) == 1


def test_template_ids_come_from_the_tokenizer(tokenizer) -> None:
    template = Template.for_tokenizer(tokenizer, n_prompts=4, max_length=64)
    start, end = _frame(tokenizer)
    assert (template.cls_id, template.sep_id) == (start, end)
    assert template.mask_id == tokenizer.mask_token_id
    # the placeholder is an ordinary special id, never the mask or the frame
    assert template.prompt_id == tokenizer.unk_token_id
    assert template.prompt_id not in (start, end, tokenizer.mask_token_id)


@pytest.mark.parametrize("n_prompts", [1, 4])
def test_single_sentence(tokenizer, n_prompts: int) -> None:
    template = Template.for_tokenizer(tokenizer, n_prompts=n_prompts, max_length=64)
    encoded = template.encode(tokenizer, [SHORT_A])
    ids, text = encoded.input_ids, _text_ids(tokenizer, SHORT_A)
    assert encoded.mask_pos == n_prompts + 1
    _check_frame(template, tokenizer, ids, encoded.mask_pos)
    assert ids[n_prompts + 2:-1] == text
    assert encoded.text_ids == text
    assert len(ids) == n_prompts + 3 + len(text)


@pytest.mark.parametrize("n_prompts", [1, 4])
def test_pair_puts_the_mask_between_the_sentences(tokenizer, n_prompts: int) -> None:
    template = Template.for_tokenizer(tokenizer, n_prompts=n_prompts, max_length=64)
    encoded = template.encode(tokenizer, [SHORT_A, SHORT_B])
    ids = encoded.input_ids
    first, second = _text_ids(tokenizer, SHORT_A), _text_ids(tokenizer, SHORT_B)
    assert encoded.mask_pos == n_prompts + 1 + len(first)
    _check_frame(template, tokenizer, ids, encoded.mask_pos)
    assert ids[n_prompts + 1:encoded.mask_pos] == first
    assert ids[encoded.mask_pos + 1:-1] == second
    assert encoded.text_ids == first + second


@pytest.mark.parametrize("max_length", [16, 24])
def test_truncated_single_keeps_the_template(tokenizer, max_length: int) -> None:
    n_p = 4
    template = Template.for_tokenizer(tokenizer, n_prompts=n_p, max_length=max_length)
    encoded = template.encode(tokenizer, [LONG_A])
    ids, text = encoded.input_ids, _text_ids(tokenizer, LONG_A)
    assert len(text) > max_length  # the input really needed cutting
    assert len(ids) == max_length
    assert encoded.mask_pos == n_p + 1
    _check_frame(template, tokenizer, ids, encoded.mask_pos)
    kept = ids[n_p + 2:-1]
    assert kept == text[:len(kept)] == encoded.text_ids  # cut from the end
    assert len(kept) == max_length - n_p - 3


@pytest.mark.parametrize("max_length", [16, 24])
def test_truncated_pair_keeps_both_sentences(tokenizer, max_length: int) -> None:
    n_p = 4
    template = Template.for_tokenizer(tokenizer, n_prompts=n_p, max_length=max_length)
    encoded = template.encode(tokenizer, [LONG_A, LONG_B])
    ids = encoded.input_ids
    first, second = _text_ids(tokenizer, LONG_A), _text_ids(tokenizer, LONG_B)
    assert len(ids) == max_length
    _check_frame(template, tokenizer, ids, encoded.mask_pos)
    kept_first, kept_second = ids[n_p + 1:encoded.mask_pos], ids[encoded.mask_pos + 1:-1]
    # both sentences survive, each cut from its end, longest first (so about evenly)
    assert kept_first and kept_second
    assert kept_first == first[:len(kept_first)]
    assert kept_second == second[:len(kept_second)]
    assert abs(len(kept_first) - len(kept_second)) <= 1
    assert len(kept_first) + len(kept_second) == max_length - n_p - 3
    assert encoded.text_ids == kept_first + kept_second


def test_truncation_cuts_the_longer_sentence_only(tokenizer) -> None:
    n_p, max_length = 4, 24
    template = Template.for_tokenizer(tokenizer, n_prompts=n_p, max_length=max_length)
    encoded = template.encode(tokenizer, ["fox", LONG_B])
    ids = encoded.input_ids
    first, second = _text_ids(tokenizer, "fox"), _text_ids(tokenizer, LONG_B)
    assert len(ids) == max_length
    _check_frame(template, tokenizer, ids, encoded.mask_pos)
    assert ids[n_p + 1:encoded.mask_pos] == first  # the short one intact
    assert ids[encoded.mask_pos + 1:-1] == second[:max_length - n_p - 3 - len(first)]


def test_short_input_is_not_padded_or_cut(tokenizer) -> None:
    template = Template.for_tokenizer(tokenizer, n_prompts=4, max_length=24)
    encoded = template.encode(tokenizer, ["fox"])
    assert len(encoded.input_ids) == 4 + 3 + len(_text_ids(tokenizer, "fox")) < 24


def test_three_texts_are_refused(tokenizer) -> None:
    template = Template.for_tokenizer(tokenizer, n_prompts=4, max_length=64)
    with pytest.raises(TemplateError, match="one or two texts, got 3"):
        template.encode(tokenizer, ["a", "b", "c"])


def test_tokenizer_without_mask_token_is_refused() -> None:
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "fox": 3, "dog": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]",
                                        cls_token="<s>", sep_token="</s>")
    assert tokenizer.mask_token_id is None
    with pytest.raises(TemplateError, match="no mask token"):
        Template.for_tokenizer(tokenizer, n_prompts=4, max_length=32)


# --- the RoBERTa path through InfoPromptModel -----------------------------------------------


@pytest.fixture
def roberta_model(roberta_tokenizer):
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(roberta_tokenizer), hidden_size=32,
                           num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           max_position_embeddings=64, initializer_range=0.2,
                           pad_token_id=roberta_tokenizer.pad_token_id)
    encoder = RobertaModel(config, add_pooling_layer=False)
    encoder.requires_grad_(False)
    encoder.eval()
    cfg = InfoPromptConfig(n_prompts=4, max_length=24, bottleneck=8)
    return InfoPromptModel(cfg, encoder, num_labels=3)


def _roberta_batch(tokenizer, texts: list[list[str]]):
    template = Template.for_tokenizer(tokenizer, n_prompts=4, max_length=24)
    encoded = [template.encode(tokenizer, t) for t in texts]
    input_ids, attention = pad([e.input_ids for e in encoded])
    mask_pos = torch.tensor([e.mask_pos for e in encoded])
    return input_ids, attention, mask_pos


def test_roberta_z_is_the_state_at_the_mask(roberta_tokenizer, roberta_model) -> None:
    model = roberta_model
    input_ids, attention, mask_pos = _roberta_batch(
        roberta_tokenizer, [[SHORT_A], [SHORT_A, SHORT_B], [LONG_A]])
    assert mask_pos.tolist()[0] == 5 and mask_pos.tolist()[1] > 5
    p_free = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z, logits, prompts = model(input_ids, attention, mask_pos, p_free)
        assert z.shape == (3, 32) and logits.shape == (3, 3) and prompts.shape == (3, 4, 32)
        torch.testing.assert_close(logits, model.head(z))
        # by hand: word embeddings with slots 1..n_p replaced by the prompts
        embeds = model.encoder.get_input_embeddings()(input_ids).clone()
        embeds[:, 1:5] = prompts
        hidden = model.encoder(inputs_embeds=embeds, attention_mask=attention).last_hidden_state
        torch.testing.assert_close(z, hidden[torch.arange(3), mask_pos])
        # and not any other position
        for other in (0, 1, mask_pos[0].item() + 1):
            assert not torch.allclose(z[0], hidden[0, other])


def test_roberta_prompts_drive_z_and_placeholders_do_not(roberta_tokenizer,
                                                         roberta_model) -> None:
    model = roberta_model
    input_ids, attention, mask_pos = _roberta_batch(roberta_tokenizer, [[SHORT_A], [LONG_A]])
    p_free = torch.randn(2, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        z, _, _ = model(input_ids, attention, mask_pos, p_free)
        # a different id at the prompt slots is replaced by the prompt: Z does not move
        other_ids = input_ids.clone()
        other_ids[:, 1:5] = roberta_tokenizer.convert_tokens_to_ids("<pad>")
        torch.testing.assert_close(model(other_ids, attention, mask_pos, p_free)[0], z)
        # one prompt vector changes: Z changes (a random direction: a constant shift would
        # vanish in the embeddings' LayerNorm)
        model.generator.up_bias[2] += torch.randn(32, generator=torch.Generator().manual_seed(4))
        z_moved, _, _ = model(input_ids, attention, mask_pos, p_free)
        assert (z_moved - z).abs().max() > 1e-3
        # and so does P' (it feeds the generator)
        z_other, _, _ = model(input_ids, attention, mask_pos, p_free + 1.0)
        assert (z_other - z_moved).abs().max() > 1e-4


def test_roberta_z_does_not_depend_on_batch_padding(roberta_tokenizer, roberta_model) -> None:
    model = roberta_model
    input_ids, attention, mask_pos = _roberta_batch(roberta_tokenizer, [[SHORT_A], [LONG_A]])
    assert attention[0].sum() < attention.shape[1]  # the first row is padded
    p_free = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z, _, _ = model(input_ids, attention, mask_pos, p_free)
        length = int(attention[0].sum())
        alone, _, _ = model(input_ids[:1, :length], attention[:1, :length], mask_pos[:1],
                            p_free[:1])
    torch.testing.assert_close(z[:1], alone, atol=1e-5, rtol=1e-5)
