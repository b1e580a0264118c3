"""The two InfoNCE losses of InfoPrompt (paper eq. 3-10) and the objective (eq. 11).

Both are a cross-entropy over K candidate scores with the positive at index 0, so
`F.cross_entropy` is the InfoNCE, and log K - NCE is the MI lower bound that is logged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from infoprompt.model import PairCritic

__all__ = ["info_nce", "mi_bound", "nce_head", "nce_rep", "sample_token_negatives"]


def info_nce(scores: torch.Tensor) -> torch.Tensor:
    """scores (B, K), positive at index 0 -> mean InfoNCE loss."""
    return F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long,
                                               device=scores.device))


def mi_bound(nce: torch.Tensor | float, k: int) -> float:
    """The InfoNCE lower bound on mutual information: log K - NCE (never above log K)."""
    return math.log(k) - float(nce)


def _reparameterise(f_mu: nn.Linear, f_sigma: nn.Linear, state: torch.Tensor,
                    noise: torch.Tensor, log_sigma_max: float) -> torch.Tensor:
    """μ(state) + σ(state)·ε with σ = exp(clamp(f_σ(state))); state (B, D), noise (B, …, D)."""
    mu = f_mu(state)
    sigma = f_sigma(state).clamp(-log_sigma_max, log_sigma_max).exp()
    extra = noise.dim() - state.dim()
    shape = (mu.shape[0],) + (1,) * extra + (mu.shape[1],)
    return mu.view(shape) + sigma.view(shape) * noise


def nce_rep(critic: PairCritic, f_mu: nn.Linear, f_sigma: nn.Linear, p_bar: torch.Tensor,
            z: torch.Tensor, z_free: torch.Tensor, k: int, log_sigma_max: float,
            noise: torch.Tensor | None = None) -> torch.Tensor:
    """Representation InfoNCE (eq. 6-10).

    Positive z⁺ = μ(Z) + σ(Z)·ε, negatives z_k = μ(Z') + σ(Z')·ε_k (k = 1..K-1), each scored
    against the mean prompt P̄. p_bar, z, z_free: (B, D); noise (B, K, D) or drawn here.
    """
    if noise is None:
        noise = torch.randn(z.shape[0], k, z.shape[1], device=z.device, dtype=z.dtype)
    positive = _reparameterise(f_mu, f_sigma, z, noise[:, 0], log_sigma_max)
    negatives = _reparameterise(f_mu, f_sigma, z_free.to(z.dtype), noise[:, 1:], log_sigma_max)
    candidates = torch.cat([positive.unsqueeze(1), negatives], 1)
    return info_nce(critic(p_bar, candidates))


def nce_head(critic: PairCritic, head: nn.Linear, logits: torch.Tensor, p_bar: torch.Tensor,
             token_negatives: torch.Tensor) -> torch.Tensor:
    """Head InfoNCE (eq. 3-5). θ_X = softmax(h(Z))ᵀ θ: the head's rows weighted by the
    model's own prediction (label-free). Candidates: P̄ (positive) and K-1 token embeddings
    of X. logits (B, C), p_bar (B, D), token_negatives (B, K-1, D)."""
    theta_x = logits.float().softmax(-1) @ head.weight.float()
    candidates = torch.cat([p_bar.unsqueeze(1).float(), token_negatives.float()], 1)
    return info_nce(critic(theta_x, candidates))


def sample_token_negatives(text_ids: torch.Tensor, text_mask: torch.Tensor, count: int,
                           embeddings: nn.Embedding) -> torch.Tensor:
    """Embeddings of `count` tokens drawn from each example's own text (with replacement,
    so short inputs work). text_ids, text_mask: (B, L) -> (B, count, D)."""
    weights = text_mask.to(torch.float32, copy=True)  # a float mask is the caller's: copy
    weights[weights.sum(1) == 0, 0] = 1.0  # an empty text falls back to its padding slot
    picks = torch.multinomial(weights, count, replacement=True)
    return embeddings(text_ids.gather(1, picks))
