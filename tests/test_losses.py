"""Tests for infoprompt.losses: both InfoNCE terms against a brute-force reference written with
explicit loops, the σ clamp, the MI bound and the token negatives."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from infoprompt.config import Critic, Estimator
from infoprompt.losses import (
    _reparameterise,
    conditional_nce,
    in_batch,
    info_nce,
    mi_bound,
    nce_head,
    nce_rep,
    rep_noise,
    sample_token_negatives,
    vib_kl,
)
from infoprompt.model import PairCritic

B, D, K, C = 3, 5, 4, 3
TAU = 0.5


# --- the reference, in plain Python floats ---------------------------------------------------


def _rows(t: torch.Tensor) -> list:
    return t.detach().double().tolist()


def _matvec(matrix: list[list[float]], vector: list[float]) -> list[float]:
    return [sum(matrix[i][j] * vector[j] for j in range(len(vector))) for i in range(len(matrix))]


def _linear(layer: nn.Linear, x: list[float]) -> list[float]:
    out = _matvec(_rows(layer.weight), x)
    if layer.bias is not None:
        out = [o + b for o, b in zip(out, _rows(layer.bias))]
    return out


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _score(kind: Critic, critic: PairCritic, query: list[float], candidate: list[float]) -> float:
    wq = _linear(critic.weight, query)  # the critic scores <c_k, W q>
    if kind is Critic.BILINEAR:
        return _dot(candidate, wq)
    return _dot(candidate, wq) / (math.sqrt(_dot(candidate, candidate))
                                  * math.sqrt(_dot(wq, wq))) / TAU


def _nce(scores: list[float]) -> float:
    """-log softmax(scores)[0], written out."""
    return -scores[0] + math.log(sum(math.exp(s) for s in scores))


def _sample(f_mu: nn.Linear, f_sigma: nn.Linear, state: list[float], eps: list[float],
            log_sigma_max: float) -> list[float]:
    mu = _linear(f_mu, state)
    log_sigma = [min(max(v, -log_sigma_max), log_sigma_max) for v in _linear(f_sigma, state)]
    return [m + math.exp(s) * e for m, s, e in zip(mu, log_sigma, eps)]


def _reference_rep(kind, critic, f_mu, f_sigma, p_bar, z, z_free, noise, log_sigma_max):
    p_bar, z, z_free, noise = _rows(p_bar), _rows(z), _rows(z_free), _rows(noise)
    total = 0.0
    for b in range(len(p_bar)):
        scores = []
        for k in range(len(noise[b])):
            state = z[b] if k == 0 else z_free[b]  # positive from Z, negatives from Z'
            candidate = _sample(f_mu, f_sigma, state, noise[b][k], log_sigma_max)
            scores.append(_score(kind, critic, p_bar[b], candidate))
        total += _nce(scores)
    return total / len(p_bar)


def _reference_head(kind, critic, head, logits, p_bar, negatives):
    logits, p_bar, negatives = _rows(logits), _rows(p_bar), _rows(negatives)
    weight = _rows(head.weight)  # (C, D): one row per class
    total = 0.0
    for b in range(len(logits)):
        top = max(logits[b])
        exp = [math.exp(v - top) for v in logits[b]]
        probs = [e / sum(exp) for e in exp]
        theta_x = [sum(probs[c] * weight[c][d] for c in range(len(probs)))
                   for d in range(len(weight[0]))]
        candidates = [p_bar[b]] + negatives[b]  # P̄ first, then the K-1 token embeddings
        scores = [_score(kind, critic, theta_x, cand) for cand in candidates]
        total += _nce(scores)
    return total / len(logits)


# --- fixtures --------------------------------------------------------------------------------


def _critic(kind: Critic, seed: int) -> PairCritic:
    torch.manual_seed(seed)
    critic = PairCritic(D, kind, TAU)
    with torch.no_grad():  # away from the identity start, and not symmetric: W q ≠ Wᵀ q
        critic.weight.weight.copy_(torch.randn(D, D))
    return critic


def _linears(seed: int) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(seed)
    f_mu, f_sigma = nn.Linear(D, D), nn.Linear(D, D)
    with torch.no_grad():
        f_sigma.weight.mul_(4.0)  # some log σ fall outside ±1: the clamp is exercised
    return f_mu, f_sigma


# --- the two InfoNCE terms -------------------------------------------------------------------


@pytest.mark.parametrize("log_sigma_max", [1.0, 5.0])
@pytest.mark.parametrize("kind", list(Critic))
def test_nce_rep_matches_brute_force(kind: Critic, log_sigma_max: float) -> None:
    critic = _critic(kind, 0)
    f_mu, f_sigma = _linears(1)
    gen = torch.Generator().manual_seed(2)
    p_bar, z, z_free = (torch.randn(B, D, generator=gen) for _ in range(3))
    noise = torch.randn(B, K, D, generator=gen)
    if log_sigma_max == 1.0:  # make sure the clamp is reached
        log_sigmas = torch.cat([f_sigma(z), f_sigma(z_free)]).abs()
        assert (log_sigmas > 1.0).any() and (log_sigmas < 1.0).any()

    loss = nce_rep(critic, f_mu, f_sigma, p_bar, z, z_free, K, log_sigma_max, noise=noise)
    expected = _reference_rep(kind, critic, f_mu, f_sigma, p_bar, z, z_free, noise,
                              log_sigma_max)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # the same noise gives the same loss; fresh noise a different one
    again = nce_rep(critic, f_mu, f_sigma, p_bar, z, z_free, K, log_sigma_max, noise=noise)
    assert again.item() == loss.item()
    torch.manual_seed(6)
    drawn = nce_rep(critic, f_mu, f_sigma, p_bar, z, z_free, K, log_sigma_max)
    assert drawn.item() != pytest.approx(loss.item(), abs=1e-6)


def test_nce_rep_draws_k_candidates() -> None:
    critic = _critic(Critic.BILINEAR, 0)
    f_mu, f_sigma = _linears(1)
    p_bar, z, z_free = torch.randn(B, D), torch.randn(B, D), torch.randn(B, D)  # seeded above
    seen = {}

    def spy(module, args, output):
        seen["scores"] = output

    critic.register_forward_hook(spy)
    for k in (2, 7):
        nce_rep(critic, f_mu, f_sigma, p_bar, z, z_free, k, 2.0)
        assert seen["scores"].shape == (B, k)


@pytest.mark.parametrize("kind", list(Critic))
def test_nce_head_matches_brute_force(kind: Critic) -> None:
    critic = _critic(kind, 3)
    torch.manual_seed(4)
    head = nn.Linear(D, C)
    gen = torch.Generator().manual_seed(5)
    logits = 2.0 * torch.randn(B, C, generator=gen)
    p_bar = torch.randn(B, D, generator=gen)
    negatives = torch.randn(B, K - 1, D, generator=gen)

    loss = nce_head(critic, head, logits, p_bar, negatives)
    expected = _reference_head(kind, critic, head, logits, p_bar, negatives)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_nce_head_is_label_free_and_follows_the_prediction() -> None:
    """θ_X comes from the model's own softmax: other logits, other loss; no labels taken."""
    critic = _critic(Critic.BILINEAR, 3)
    torch.manual_seed(4)
    head = nn.Linear(D, C)
    p_bar, negatives = torch.randn(B, D), torch.randn(B, K - 1, D)
    logits = torch.randn(B, C)
    base = nce_head(critic, head, logits, p_bar, negatives)
    shifted = nce_head(critic, head, logits + 5.0, p_bar, negatives)  # softmax-invariant
    assert shifted.item() == pytest.approx(base.item(), rel=1e-5)
    other = nce_head(critic, head, logits.flip(-1) * 3, p_bar, negatives)
    assert other.item() != pytest.approx(base.item(), rel=1e-3)


@pytest.mark.parametrize("kind", list(Critic))
def test_losses_are_differentiable_in_every_input(kind: Critic) -> None:
    critic = _critic(kind, 0)
    f_mu, f_sigma = _linears(1)
    p_bar = torch.randn(B, D, requires_grad=True)
    z = torch.randn(B, D, requires_grad=True)
    nce_rep(critic, f_mu, f_sigma, p_bar, z, torch.randn(B, D), K, 2.0).backward()
    for tensor in (p_bar, z, critic.weight.weight, f_mu.weight, f_sigma.weight):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0


# --- info_nce and the MI bound ---------------------------------------------------------------


def test_info_nce_is_cross_entropy_at_index_0() -> None:
    scores = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    expected = sum(_nce(row) for row in _rows(scores)) / 4
    assert info_nce(scores).item() == pytest.approx(expected, rel=1e-6)
    # uniform scores: NCE = log K and the bound is 0
    assert info_nce(torch.zeros(2, 6)).item() == pytest.approx(math.log(6))
    assert mi_bound(info_nce(torch.zeros(2, 6)), 6) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("scale", [0.1, 1.0, 30.0])
@pytest.mark.parametrize("k", [2, 8, 32])
def test_mi_bound_never_exceeds_log_k(k: int, scale: float) -> None:
    scores = scale * torch.randn(64, k, generator=torch.Generator().manual_seed(k))
    nce = info_nce(scores)
    assert nce.item() >= 0
    assert mi_bound(nce, k) <= math.log(k)
    assert mi_bound(nce.item(), k) == pytest.approx(math.log(k) - nce.item())
    # a positive that wins by far reaches the bound's ceiling, log K
    scores[:, 0] = 1e4
    assert mi_bound(info_nce(scores), k) == pytest.approx(math.log(k), abs=1e-5)


# --- σ stays bounded -------------------------------------------------------------------------


@pytest.mark.parametrize("log_sigma_max", [0.5, 2.0])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_sigma_is_clamped(log_sigma_max: float, sign: float) -> None:
    f_mu, f_sigma = nn.Linear(D, D), nn.Linear(D, D)
    with torch.no_grad():
        f_mu.weight.zero_()
        f_mu.bias.zero_()
        f_sigma.bias.fill_(sign * 1e6)  # huge f_σ output
    state = torch.randn(B, D)
    ones = torch.ones(B, K, D)
    # μ = 0 and ε = 1: what comes out is σ itself
    sigma = _reparameterise(f_mu, f_sigma, state, ones, log_sigma_max)
    assert sigma.shape == (B, K, D)
    torch.testing.assert_close(sigma, torch.full_like(sigma, math.exp(sign * log_sigma_max)))
    # and the loss built on it stays finite
    critic = _critic(Critic.BILINEAR, 0)
    loss = nce_rep(critic, f_mu, f_sigma, torch.randn(B, D), state, torch.randn(B, D), K,
                   log_sigma_max)
    assert torch.isfinite(loss)


def test_reparameterise_uses_each_examples_own_mu_and_sigma() -> None:
    torch.manual_seed(0)
    f_mu, f_sigma = nn.Linear(D, D), nn.Linear(D, D)
    state, noise = torch.randn(B, D), torch.randn(B, K, D)
    out = _reparameterise(f_mu, f_sigma, state, noise, 2.0)
    for b in range(B):
        mu, sigma = f_mu(state[b]), f_sigma(state[b]).clamp(-2, 2).exp()
        for k in range(K):
            torch.testing.assert_close(out[b, k], mu + sigma * noise[b, k])


# --- token negatives -------------------------------------------------------------------------


def _id_embedding(size: int = 100) -> nn.Embedding:
    """Embedding whose vector for id i is [i]: the output names the token picked."""
    embedding = nn.Embedding(size, 1)
    with torch.no_grad():
        embedding.weight.copy_(torch.arange(size, dtype=torch.float32).unsqueeze(1))
    return embedding


@pytest.mark.parametrize("count", [3, 31, 200])
def test_token_negatives_come_from_real_tokens_only(count: int) -> None:
    torch.manual_seed(0)
    lengths = [6, 2, 1]  # shorter than count: drawn with replacement
    text_ids = torch.full((3, 6), 99)  # 99 marks padding: it must never come out
    text_mask = torch.zeros(3, 6, dtype=torch.long)
    for b, n in enumerate(lengths):
        text_ids[b, :n] = torch.arange(n) + 10 * (b + 1)
        text_mask[b, :n] = 1
    mask_before = text_mask.clone()
    picked = sample_token_negatives(text_ids, text_mask, count, _id_embedding())
    assert picked.shape == (3, count, 1)
    for b, n in enumerate(lengths):
        ids = set(picked[b, :, 0].long().tolist())
        assert ids <= set(range(10 * (b + 1), 10 * (b + 1) + n))  # own real tokens only
        if count >= 200:
            assert ids == set(range(10 * (b + 1), 10 * (b + 1) + n))  # not stuck on one
    assert torch.equal(text_mask, mask_before)


def test_token_negatives_of_an_empty_text_do_not_fail() -> None:
    text_ids = torch.tensor([[5, 6, 7], [8, 0, 0]])
    text_mask = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])  # second text is empty
    mask_before = text_mask.clone()
    picked = sample_token_negatives(text_ids, text_mask, 4, _id_embedding())
    assert picked.shape == (2, 4, 1)
    assert set(picked[0, :, 0].long().tolist()) <= {5, 6, 7}
    assert set(picked[1, :, 0].long().tolist()) == {8}  # the fallback slot
    assert torch.equal(text_mask, mask_before)  # the caller's mask is not written to


def test_token_negatives_are_the_real_embeddings() -> None:
    torch.manual_seed(0)
    embedding = nn.Embedding(50, D)
    text_ids = torch.tensor([[3, 4, 0], [7, 0, 0]])
    text_mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    picked = sample_token_negatives(text_ids, text_mask, 5, embedding)
    assert picked.shape == (2, 5, D)
    for k in range(5):
        torch.testing.assert_close(picked[1, k], embedding.weight[7])
        assert any(torch.equal(picked[0, k], embedding.weight[i]) for i in (3, 4))


# --- the in_batch estimator (negatives from the same variable) -------------------------------


def _reference_rep_in_batch(kind, critic, f_mu, f_sigma, p_bar, z, z_free, noise,
                            log_sigma_max, hard_negative):
    """Row i: P̄_i scores every example's sample μ(Z_j) + σ(Z_j)·ε_j0 (the positive j = i),
    then, with hard_negative, its own μ(Z'_i) + σ(Z'_i)·ε_i1."""
    p_bar, z, z_free, noise = _rows(p_bar), _rows(z), _rows(z_free), _rows(noise)
    samples = [_sample(f_mu, f_sigma, z[j], noise[j][0], log_sigma_max) for j in range(len(z))]
    total = 0.0
    for i in range(len(p_bar)):
        candidates = [samples[i]] + [samples[j] for j in range(len(z)) if j != i]
        if hard_negative:
            candidates.append(_sample(f_mu, f_sigma, z_free[i], noise[i][1], log_sigma_max))
        total += _nce([_score(kind, critic, p_bar[i], c) for c in candidates])
    return total / len(p_bar)


def test_in_batch_puts_each_rows_own_item_first() -> None:
    x = torch.arange(3.0).unsqueeze(1)  # (B=3, D=1): item j is [j]
    assert in_batch(x)[..., 0].tolist() == [[0, 1, 2], [1, 2, 0], [2, 0, 1]]


@pytest.mark.parametrize("hard_negative", [True, False])
@pytest.mark.parametrize("kind", list(Critic))
def test_nce_rep_in_batch_matches_brute_force(kind: Critic, hard_negative: bool) -> None:
    critic = _critic(kind, 0)
    f_mu, f_sigma = _linears(1)
    gen = torch.Generator().manual_seed(2)
    p_bar, z, z_free = (torch.randn(B, D, generator=gen) for _ in range(3))
    noise = torch.randn(B, 1 + hard_negative, D, generator=gen)

    loss = nce_rep(critic, f_mu, f_sigma, p_bar, z, z_free, K, 1.0, noise=noise,
                   estimator=Estimator.IN_BATCH, hard_negative=hard_negative)
    expected = _reference_rep_in_batch(kind, critic, f_mu, f_sigma, p_bar, z, z_free, noise,
                                       1.0, hard_negative)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # K (k_negatives) plays no part: the batch is the candidate set
    other_k = nce_rep(critic, f_mu, f_sigma, p_bar, z, z_free, 17, 1.0, noise=noise,
                      estimator=Estimator.IN_BATCH, hard_negative=hard_negative)
    assert other_k.item() == loss.item()


def test_hard_negative_adds_one_column_and_draws_its_own_noise() -> None:
    critic = _critic(Critic.BILINEAR, 0)
    f_mu, f_sigma = _linears(1)
    p_bar, z, z_free = torch.randn(B, D), torch.randn(B, D), torch.randn(B, D)
    seen = {}
    critic.register_forward_hook(lambda module, args, output: seen.update(scores=output))
    for hard_negative, columns in ((False, B), (True, B + 1)):
        assert rep_noise(z, K, estimator=Estimator.IN_BATCH,
                         hard_negative=hard_negative).shape == (B, 1 + hard_negative, D)
        nce_rep(critic, f_mu, f_sigma, p_bar, z, z_free, K, 2.0,
                estimator=Estimator.IN_BATCH, hard_negative=hard_negative)
        assert seen["scores"].shape == (B, columns)
    assert rep_noise(z, K).shape == (B, K, D)  # paper: the positive and K-1 negatives


@pytest.mark.parametrize("kind", list(Critic))
def test_nce_head_in_batch_matches_brute_force(kind: Critic) -> None:
    """θ_X_i scores every example's P̄_j, the positive j = i: the paper's reference with the
    other examples' P̄ as the negatives."""
    critic = _critic(kind, 3)
    torch.manual_seed(4)
    head = nn.Linear(D, C)
    gen = torch.Generator().manual_seed(5)
    logits = 2.0 * torch.randn(B, C, generator=gen)
    p_bar = torch.randn(B, D, generator=gen)
    others = torch.stack([torch.stack([p_bar[j] for j in range(B) if j != i]) for i in range(B)])

    loss = nce_head(critic, head, logits, p_bar, None, estimator=Estimator.IN_BATCH)
    expected = _reference_head(kind, critic, head, logits, p_bar, others)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


# --- the P̄-shuffle diagnostic ----------------------------------------------------------------


class _QueryBlindCritic(nn.Module):
    """Scores the candidates alone (a fixed direction), whatever the query: a critic that
    ignores the prompt, as the paper's rep critic learns to (docs/design.md 2.7)."""

    def forward(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return candidates.float().sum(-1)


@pytest.mark.parametrize("estimator", list(Estimator))
def test_shuffled_prompt_leaves_a_query_blind_critic_unchanged(estimator: Estimator) -> None:
    f_mu, f_sigma = _linears(1)
    gen = torch.Generator().manual_seed(2)
    p_bar, z, z_free = (torch.randn(B, D, generator=gen) for _ in range(3))
    noise = rep_noise(z, K, estimator=estimator)

    def loss(critic, prompt):
        return nce_rep(critic, f_mu, f_sigma, prompt, z, z_free, K, 2.0, noise,
                       estimator=estimator).item()

    blind, reading = _QueryBlindCritic(), _critic(Critic.BILINEAR, 0)
    shuffled = p_bar.roll(1, 0)
    assert loss(blind, shuffled) == loss(blind, p_bar)
    assert loss(reading, shuffled) != pytest.approx(loss(reading, p_bar), abs=1e-3)


# --- the VIB term ----------------------------------------------------------------------------


def test_vib_kl_is_the_per_dimension_mean_of_the_gaussian_kl() -> None:
    mu = torch.tensor([[1.0, 0.0], [0.0, -2.0]])
    log_sigma = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # per dimension (μ² + σ² - 1)/2 - log σ: 0.5, 1.5 - log 2, 0, 2; then the mean of four
    expected = (0.5 + 1.5 - math.log(2.0) + 0.0 + 2.0) / 4
    assert vib_kl(mu, log_sigma).item() == pytest.approx(expected, rel=1e-6)
    prior = torch.distributions.Normal(0.0, 1.0)
    posterior = torch.distributions.Normal(mu, log_sigma.exp())
    torch.testing.assert_close(vib_kl(mu, log_sigma),
                               torch.distributions.kl_divergence(posterior, prior).mean())
    assert vib_kl(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0  # the prior itself


# --- the conditional diagnostic ---------------------------------------------------------------


def test_conditional_nce_gives_example_identity_nothing() -> None:
    """States that tell examples apart perfectly (in-batch InfoNCE ~0, the bound at log B) but
    do not depend on the prompt (every candidate of a row equal): the conditional estimate is
    exactly log K, a bound of 0."""
    torch.manual_seed(0)
    examples = torch.randn(6, 16) * 10
    assert info_nce(torch.einsum("bd,bkd->bk", examples, in_batch(examples))) < 1e-3
    same_prompt = examples[:, None].expand(6, 5, 16)
    nce = conditional_nce(same_prompt, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(nce, torch.full((6,), math.log(5)))


def test_conditional_nce_grows_as_prompts_move_the_state() -> None:
    """0 for equal candidates, towards log K as the K states of a row move apart."""
    torch.manual_seed(0)
    base, spread = torch.randn(4, 1, 32), torch.randn(4, 8, 32)
    bounds = [math.log(8) - conditional_nce(base + scale * spread,
                                            generator=torch.Generator().manual_seed(1)).mean()
              for scale in (0.0, 0.1, 0.3, 1.0, 10.0)]
    assert bounds[0] == pytest.approx(0.0, abs=1e-6)
    assert all(a < b for a, b in zip(bounds, bounds[1:]))
    assert bounds[-1] == pytest.approx(math.log(8), abs=0.05)
