"""The InfoPrompt model around a frozen encoder: prompt generator, head, critics, adapters.

Shapes: B batch, T tokens, D hidden, n_p prompts, r bottleneck, C classes, K candidates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from infoprompt.config import Critic, InfoPromptConfig

__all__ = ["Adapter", "InfoPromptModel", "PairCritic", "PromptGenerator", "gaussian"]


def gaussian(f_mu: nn.Linear, f_sigma: nn.Linear, state: torch.Tensor,
             log_sigma_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian a state is mapped to: μ = f_μ(state) and log σ = clamp(f_σ(state),
    ±log_sigma_max), each (B, D) for a state (B, D). The clamp keeps the noise bounded."""
    return f_mu(state), f_sigma(state).clamp(-log_sigma_max, log_sigma_max)


class PromptGenerator(nn.Module):
    """IDPG-style generator: p_i = W_up_i · W_down_i · P' (+ biases), one pair per prompt."""

    def __init__(self, hidden: int, bottleneck: int, n_prompts: int, init_prompts: torch.Tensor):
        super().__init__()
        self.down = nn.Parameter(torch.randn(n_prompts, hidden, bottleneck) / hidden ** 0.5)
        self.down_bias = nn.Parameter(torch.zeros(n_prompts, bottleneck))
        # Small up-projection and a bias at real token embeddings: the prompts start where
        # WARP starts them (in the embedding cloud) and move as P' asks.
        self.up = nn.Parameter(torch.randn(n_prompts, bottleneck, hidden) * 0.02)
        self.up_bias = nn.Parameter(init_prompts.clone())

    def forward(self, p_free: torch.Tensor) -> torch.Tensor:
        """p_free (B, D) -> prompts (B, n_p, D)."""
        low = torch.einsum("bd,pdr->bpr", p_free, self.down) + self.down_bias
        return torch.einsum("bpr,prd->bpd", low, self.up) + self.up_bias


class PairCritic(nn.Module):
    """Scores candidates against a query: bilinear <c_k, W q> (the paper's l(·,·), eq. 5 and
    10), or cosine cos(c_k, W q) / τ, whose scores cannot grow without bound."""

    def __init__(self, hidden: int, kind: Critic, temperature: float):
        super().__init__()
        self.weight = nn.Linear(hidden, hidden, bias=False)
        nn.init.eye_(self.weight.weight)  # start at the plain dot product
        self.kind = kind
        self.temperature = temperature

    def forward(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """query (B, D), candidates (B, K, D) -> scores (B, K), in float32 (autocast off:
        under bf16 autocast the projection and the products would run in bf16)."""
        with torch.autocast(query.device.type, enabled=False):
            return self._scores(self.weight(query.float()), candidates.float())

    def _scores(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        if self.kind is Critic.BILINEAR:
            return torch.einsum("bkd,bd->bk", candidates, query)
        if self.kind is Critic.COSINE:
            return torch.einsum("bkd,bd->bk", F.normalize(candidates, dim=-1),
                                F.normalize(query, dim=-1)) / self.temperature
        raise ValueError(f"unknown critic {self.kind!r}")


class Adapter(nn.Module):
    """Bottleneck adapter h + up(relu(down(h))); up starts at zero so training starts at Φ."""

    def __init__(self, hidden: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(F.relu(self.down(hidden)))


def _transformer_layers(encoder: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(encoder).__name__} has no encoder.layer list for adapters")
    return layers


class InfoPromptModel(nn.Module):
    """One code path for every Method; which parts exist follows `cfg.method`."""

    def __init__(self, cfg: InfoPromptConfig, encoder: nn.Module, num_labels: int):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        embeddings = encoder.get_input_embeddings().weight
        # Prompts start at the embeddings of random vocabulary tokens (drawn by seed), past
        # the special/unused ids at the start of a vocabulary (a small one has < 1000 ids).
        low = min(1000, embeddings.shape[0] // 2)
        picks = torch.randint(low, embeddings.shape[0], (cfg.n_prompts,))
        init_prompts = embeddings[picks].detach().float()

        self.generator = (PromptGenerator(hidden, cfg.bottleneck, cfg.n_prompts, init_prompts)
                          if cfg.method.uses_generator else None)
        self.free_prompts = (nn.Parameter(init_prompts.clone())
                             if cfg.method.uses_free_prompts else None)
        self.head = nn.Linear(hidden, num_labels)
        if cfg.method.uses_critics:
            self.f_mu = nn.Linear(hidden, hidden)
            self.f_sigma = nn.Linear(hidden, hidden)
            self.critic_rep = PairCritic(hidden, cfg.critic, cfg.temperature)  # W2, eq. 10
            self.critic_head = PairCritic(hidden, cfg.critic, cfg.temperature)  # W1, eq. 5
        self.adapters = None
        if cfg.method.uses_adapters:
            layers = _transformer_layers(encoder)
            self.adapters = nn.ModuleList(Adapter(hidden, cfg.bottleneck) for _ in layers)
            for layer, adapter in zip(layers, self.adapters):
                layer.register_forward_hook(_adapter_hook(adapter))
        if cfg.method.trains_encoder:
            encoder.requires_grad_(True)

    def prompts(self, p_free: torch.Tensor) -> torch.Tensor | None:
        """(B, n_p, D) prompt vectors, or None for methods without prompts."""
        if self.generator is not None:
            return self.generator(p_free)
        if self.free_prompts is not None:
            return self.free_prompts.expand(len(p_free), -1, -1)
        return None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                mask_pos: torch.Tensor, p_free: torch.Tensor, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Prompted pass. Returns Z (B, D) at the mask, logits (B, C), prompts (B, n_p, D).

        With `cfg.effective_vib` > 0 the head reads the bottleneck latent instead of Z:
        μ(Z) + σ(Z)·noise for noise (B, D) (training), μ(Z) when noise is None (evaluation,
        deterministic). Otherwise noise is ignored."""
        embeds = self.encoder.get_input_embeddings()(input_ids)
        prompts = self.prompts(p_free)
        if prompts is not None:
            n_p = prompts.shape[1]
            embeds = torch.cat([embeds[:, :1], prompts.to(embeds.dtype), embeds[:, 1 + n_p:]], 1)
        hidden = self.encoder(inputs_embeds=embeds,
                              attention_mask=attention_mask).last_hidden_state
        z = hidden[torch.arange(len(mask_pos), device=hidden.device), mask_pos]
        if not self.cfg.effective_vib:
            return z, self.head(z), prompts
        mu, log_sigma = gaussian(self.f_mu, self.f_sigma, z, self.cfg.log_sigma_max)
        latent = mu if noise is None else mu + log_sigma.exp() * noise.to(mu.dtype)
        return z, self.head(latent), prompts

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Only what training changes: a checkpoint never carries the frozen encoder."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}


def _adapter_hook(adapter: Adapter):
    def hook(module, args, output):
        # transformers 5 layers return a tensor, 4.x a tuple whose first item is the state
        if isinstance(output, tuple):
            return (adapter(output[0]),) + output[1:]
        return adapter(output)
    return hook
