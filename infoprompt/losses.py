"""The two InfoNCE losses of InfoPrompt (paper eq. 3-10), their estimators, and the VIB term.

Both are a cross-entropy over K candidate scores with the positive at index 0, so
`F.cross_entropy` is the InfoNCE, and log K - NCE is the MI lower bound that is logged.
The estimator decides the negatives (docs/design.md 2.7): `paper` takes them from another
variable than the positive (Z' for Z, tokens for P̄), so a fixed direction wins the loss;
`in_batch` takes them from the same variable, the batch's other examples (CPC, SimCLR).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from infoprompt.config import Estimator
from infoprompt.model import PairCritic, gaussian

__all__ = ["in_batch", "info_nce", "mi_bound", "nce_head", "nce_rep", "rep_noise",
           "sample_token_negatives", "vib_kl"]


def info_nce(scores: torch.Tensor) -> torch.Tensor:
    """scores (B, K), positive at index 0 -> mean InfoNCE loss."""
    return F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long,
                                               device=scores.device))


def mi_bound(nce: torch.Tensor | float, k: int) -> float:
    """The InfoNCE lower bound on mutual information: log K - NCE (never above log K)."""
    return math.log(k) - float(nce)


def in_batch(x: torch.Tensor) -> torch.Tensor:
    """Every example's candidates from the whole batch, its own first: x (B, D) -> (B, B, D),
    row i = x_i, x_{i+1}, …, x_{i-1}. The positive sits at index 0, as info_nce expects."""
    b = x.shape[0]
    rows = torch.arange(b, device=x.device)
    return x[(rows[:, None] + rows[None, :]) % b]


def _reparameterise(f_mu: nn.Linear, f_sigma: nn.Linear, state: torch.Tensor,
                    noise: torch.Tensor, log_sigma_max: float) -> torch.Tensor:
    """μ(state) + σ(state)·ε with σ = exp(clamp(f_σ(state))); state (B, D), noise (B, …, D)."""
    mu, log_sigma = gaussian(f_mu, f_sigma, state, log_sigma_max)
    extra = noise.dim() - state.dim()
    shape = (mu.shape[0],) + (1,) * extra + (mu.shape[1],)
    return mu.view(shape) + log_sigma.exp().view(shape) * noise


def rep_noise(z: torch.Tensor, k: int, *, estimator: Estimator = Estimator.PAPER,
              hard_negative: bool = True) -> torch.Tensor:
    """ε of NCE_rep's samples, (B, S, D) for z (B, D): S = K under paper (the positive, then
    the K-1 negatives), 1 + hard_negative under in_batch (the example's own sample, then its
    hard negative). Drawn by the caller when one draw must serve two calls of nce_rep."""
    samples = k if estimator is Estimator.PAPER else 1 + int(hard_negative)
    return torch.randn(z.shape[0], samples, z.shape[1], device=z.device, dtype=z.dtype)


def nce_rep(critic: PairCritic, f_mu: nn.Linear, f_sigma: nn.Linear, p_bar: torch.Tensor,
            z: torch.Tensor, z_free: torch.Tensor, k: int, log_sigma_max: float,
            noise: torch.Tensor | None = None, *, estimator: Estimator = Estimator.PAPER,
            hard_negative: bool = True) -> torch.Tensor:
    """Representation InfoNCE (eq. 6-10): the mean prompt P̄_i scores candidate samples
    μ(·) + σ(·)·ε; the positive is the prompted state's, z⁺_i = μ(Z_i) + σ(Z_i)·ε_i0.

    paper: negatives μ(Z'_i) + σ(Z'_i)·ε_ik, k = 1..K-1 (the example's own prompt-free state).
    in_batch: negatives z⁺_j of the batch's other examples j ≠ i (K = B), and with
    hard_negative one more, μ(Z'_i) + σ(Z'_i)·ε_i1 (K = B + 1).
    p_bar, z, z_free: (B, D); noise (B, S, D) from `rep_noise`, or drawn here.
    """
    if noise is None:
        noise = rep_noise(z, k, estimator=estimator, hard_negative=hard_negative)
    positive = _reparameterise(f_mu, f_sigma, z, noise[:, 0], log_sigma_max)
    z_free = z_free.to(z.dtype)
    if estimator is Estimator.PAPER:
        negatives = _reparameterise(f_mu, f_sigma, z_free, noise[:, 1:], log_sigma_max)
        candidates = torch.cat([positive.unsqueeze(1), negatives], 1)
    else:
        candidates = in_batch(positive)
        if hard_negative:
            hard = _reparameterise(f_mu, f_sigma, z_free, noise[:, 1], log_sigma_max)
            candidates = torch.cat([candidates, hard.unsqueeze(1)], 1)
    return info_nce(critic(p_bar, candidates))


def nce_head(critic: PairCritic, head: nn.Linear, logits: torch.Tensor, p_bar: torch.Tensor,
             token_negatives: torch.Tensor | None, *,
             estimator: Estimator = Estimator.PAPER) -> torch.Tensor:
    """Head InfoNCE (eq. 3-5). θ_X = softmax(h(Z))ᵀ θ: the head's rows weighted by the
    model's own prediction (label-free), scores candidates with P̄_i the positive.

    paper: negatives are K-1 token embeddings of X, token_negatives (B, K-1, D).
    in_batch: negatives are the other examples' P̄_j (K = B); token_negatives is unused.
    logits (B, C), p_bar (B, D).
    """
    with torch.autocast(logits.device.type, enabled=False):  # fp32 under bf16 autocast too
        theta_x = logits.float().softmax(-1) @ head.weight.float()
    if estimator is Estimator.PAPER:
        candidates = torch.cat([p_bar.unsqueeze(1).float(), token_negatives.float()], 1)
    else:
        candidates = in_batch(p_bar.float())
    return info_nce(critic(theta_x, candidates))


def vib_kl(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) of (B, D) Gaussians, averaged over the batch AND the D
    dimensions (not summed over D: a weight such as the authors' 0.1 then means the same at
    any hidden size). Per dimension: (μ² + σ² - 1)/2 - log σ."""
    mu, log_sigma = mu.float(), log_sigma.float()
    return (0.5 * (mu.square() + (2 * log_sigma).exp() - 1) - log_sigma).mean()


def sample_token_negatives(text_ids: torch.Tensor, text_mask: torch.Tensor, count: int,
                           embeddings: nn.Embedding) -> torch.Tensor:
    """Embeddings of `count` tokens drawn from each example's own text (with replacement,
    so short inputs work). text_ids, text_mask: (B, L) -> (B, count, D)."""
    weights = text_mask.to(torch.float32, copy=True)  # a float mask is the caller's: copy
    weights[:, 0] += weights.sum(1) == 0  # an empty text falls back to its padding slot
    # (added, not assigned through a boolean index: that would wait for the GPU)
    picks = torch.multinomial(weights, count, replacement=True)
    return embeddings(text_ids.gather(1, picks))
