"""InfoPromptConfig: everything one training run needs, validated at construction.

One object flows from the CLI to the Ray trainable to `train.run`; checkpoints and
results store `to_dict()`. Defaults are the paper's (Section 4, "Implementation").
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["ConfigError", "Critic", "InfoPromptConfig", "Method"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and what is allowed."""


class Method(str, Enum):
    INFOPROMPT = "infoprompt"  # L_pred + β·NCE_rep + γ·NCE_head
    GAMMA0 = "gamma0"  # γ = 0
    BETA0 = "beta0"  # β = 0
    PRED_ONLY = "pred_only"  # β = γ = 0, generator kept
    IDPG = "idpg"  # generator, no MI losses, no critics
    WARP = "warp"  # n_p free prompt vectors
    ADAPTER = "adapter"  # bottleneck adapters after each layer, no prompts
    FINETUNE = "finetune"  # whole encoder trainable, no prompts

    @property
    def uses_generator(self) -> bool:
        return self in {Method.INFOPROMPT, Method.GAMMA0, Method.BETA0, Method.PRED_ONLY,
                        Method.IDPG}

    @property
    def uses_prompts(self) -> bool:
        return self.uses_generator or self is Method.WARP

    @property
    def uses_critics(self) -> bool:
        """Whether the MI heads (f_mu, f_sigma, W1, W2) exist at all."""
        return self in {Method.INFOPROMPT, Method.GAMMA0, Method.BETA0, Method.PRED_ONLY}


class Critic(str, Enum):
    BILINEAR = "bilinear"  # the paper's l(a, b) = aᵀ W b
    COSINE = "cosine"  # cos(a, W b) / τ: bounded scores, cannot be won by growing norms


def _choices(enum: type[Enum]) -> str:
    return ", ".join(m.value for m in enum)


@dataclass(frozen=True)
class InfoPromptConfig:
    # --- data (these fields determine the Arrow store key) ---
    task: str = "demo"  # cola | sst2 | rte | mrpc | demo
    shots: int | None = 64  # total examples in train (and in valid), class-balanced; None = all
    seed: int = 0  # draws the few-shot split and seeds training
    model: str = "minilm"  # Hugging Face name or local path; "minilm" = embedded MiniLM-L6
    data_dir: str | None = None  # local GLUE directory; None = datasets.load_dataset
    max_length: int = 128  # tokens, template included
    n_prompts: int = 4  # n_p, prompt slots in the template
    cache_dir: str | None = None  # Arrow store; None = ~/.cache/infoprompt

    # --- method ---
    method: Method = Method.INFOPROMPT
    critic: Critic = Critic.BILINEAR
    beta: float = 0.1  # weight of NCE_rep (eq. 11)
    gamma: float = 0.05  # weight of NCE_head (eq. 11)
    k_negatives: int = 32  # K: one positive + K-1 negatives per InfoNCE
    bottleneck: int = 64  # r: generator (and adapter) bottleneck width
    temperature: float = 0.1  # τ of the cosine critic
    log_sigma_max: float = 2.0  # σ = exp(clamp(f_σ, -max, max)) keeps the noise bounded

    # --- optimisation ---
    lr: float = 1e-3
    encoder_lr: float = 2e-5  # only `finetune`: lr of the encoder's own weights
    batch_size: int = 8
    epochs: int = 30
    warmup_ratio: float = 0.06  # fraction of steps with linear warm-up, then linear decay
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    bf16: bool = False  # bf16 autocast (CPU and CUDA)
    device: str = "auto"  # auto = cuda when available, else cpu
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "method", Method(self.method))
        except ValueError:
            raise ConfigError(f"unknown method {self.method!r}; choose one of: "
                              f"{_choices(Method)}") from None
        try:
            object.__setattr__(self, "critic", Critic(self.critic))
        except ValueError:
            raise ConfigError(f"unknown critic {self.critic!r}; choose one of: "
                              f"{_choices(Critic)}") from None
        for name in ("beta", "gamma"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if int(self.k_negatives) != self.k_negatives or self.k_negatives < 2:
            raise ConfigError(f"k_negatives (K) must be an integer >= 2, got {self.k_negatives!r}")
        object.__setattr__(self, "k_negatives", int(self.k_negatives))
        object.__setattr__(self, "bottleneck", int(self.bottleneck))
        for name in ("lr", "encoder_lr", "temperature", "max_grad_norm", "log_sigma_max"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("bottleneck", "batch_size", "epochs", "n_prompts", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.shots is not None and self.shots < 2:
            raise ConfigError(f"shots must be >= 2 (or 'all'), got {self.shots!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.max_length < self.n_prompts + 8:
            raise ConfigError(f"max_length {self.max_length} leaves no room for text after "
                              f"{self.n_prompts} prompts; use at least {self.n_prompts + 8}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    # The ablations are the same code path with a weight forced to zero.
    @property
    def effective_beta(self) -> float:
        return self.beta if self.method in (Method.INFOPROMPT, Method.GAMMA0) else 0.0

    @property
    def effective_gamma(self) -> float:
        return self.gamma if self.method in (Method.INFOPROMPT, Method.BETA0) else 0.0

    def replace(self, **changes: Any) -> InfoPromptConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["method"] = self.method.value
        out["critic"] = self.critic.value
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> InfoPromptConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return cls(**values)
