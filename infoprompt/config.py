"""InfoPromptConfig: everything one training run needs, validated at construction.

One object flows from the CLI to the Ray trainable to `train.run`; checkpoints and
results store `to_dict()`. Defaults are the paper's (Section 4, "Implementation").
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from infoprompt.errors import InfoPromptError
from infoprompt.tasks import TASKS

__all__ = ["ConfigError", "Critic", "Estimator", "InfoPromptConfig", "Method"]


class ConfigError(InfoPromptError):
    """A configuration value is invalid; the message says which and what is allowed."""


class Method(str, Enum):
    """What is trained and with which losses. Every capability a method has is decided here
    and nowhere else: the model, the loss and the search read these properties."""

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
        """Prompts come from P' through the bottleneck generator (IDPG-style)."""
        return self in {Method.INFOPROMPT, Method.GAMMA0, Method.BETA0, Method.PRED_ONLY,
                        Method.IDPG}

    @property
    def uses_free_prompts(self) -> bool:
        """n_p prompt vectors trained directly, the same for every input (WARP)."""
        return self is Method.WARP

    @property
    def uses_prompts(self) -> bool:
        """The prompted template; the others read the prompt-free one."""
        return self.uses_generator or self.uses_free_prompts

    @property
    def uses_adapters(self) -> bool:
        return self is Method.ADAPTER

    @property
    def trains_encoder(self) -> bool:
        return self is Method.FINETUNE

    @property
    def uses_bottleneck(self) -> bool:
        """r is the width of the generator's or the adapters' bottleneck."""
        return self.uses_generator or self.uses_adapters

    @property
    def uses_critics(self) -> bool:
        """Whether the MI heads (f_mu, f_sigma, W1, W2) exist and both NCE terms are computed
        (and logged), whatever their weights."""
        return self in {Method.INFOPROMPT, Method.GAMMA0, Method.BETA0, Method.PRED_ONLY}

    @property
    def uses_rep_loss(self) -> bool:
        """β·NCE_rep is part of the objective."""
        return self in {Method.INFOPROMPT, Method.GAMMA0}

    @property
    def uses_head_loss(self) -> bool:
        """γ·NCE_head is part of the objective."""
        return self in {Method.INFOPROMPT, Method.BETA0}


class Critic(str, Enum):
    BILINEAR = "bilinear"  # the paper's l(a, b) = aᵀ W b
    COSINE = "cosine"  # cos(a, W b) / τ: bounded scores, cannot be won by growing norms


class Estimator(str, Enum):
    """Where the InfoNCE negatives come from (docs/design.md 2.7)."""

    PAPER = "paper"  # NCE_rep: the example's own Z' + noise; NCE_head: tokens of X
    IN_BATCH = "in_batch"  # the same variable as the positive, from the batch's other examples


def _choices(enum: type[Enum]) -> str:
    return ", ".join(m.value for m in enum)


def _integral(value: Any) -> bool:
    """An int, or a float with an integer value (JSON and search spaces hand out 64.0)."""
    return isinstance(value, numbers.Real) and math.isfinite(value) and int(value) == value


def _field(default: Any, help: str, **metadata: Any) -> Any:
    return field(default=default, metadata={"help": help, **metadata})


def parse_shots(value: str) -> int | None:
    """--shots: an integer, or 'all' (None)."""
    if value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'all', got {value!r}") from None


_ENUMS = {"method": Method, "critic": Critic, "estimator": Estimator}  # stored as their values


@dataclass(frozen=True)
class InfoPromptConfig:
    # --- data (these fields also determine the Arrow store key) ---
    task: str = _field("demo", "task: cola, sst2, rte, mrpc, semeval, demo (generated, "
                               "offline) or custom (your data: --data-dir with a task.json)")
    shots: int | None = _field(64, "examples in train and again in valid, class-balanced; "
                                   "'all' = the full train split with a held-out 10%% valid",
                                   parse=parse_shots)
    seed: int = _field(0, "draws the few-shot split and seeds training")
    model: str = _field("minilm", "encoder: Hugging Face name or local path; "
                                  "'minilm' = the embedded MiniLM-L6")
    data_dir: str | None = _field(None, "local data folder: GLUE (TSV or Parquet), the "
                                        "SemEval-2010 Task 8 release, or custom data with its "
                                        "task.json; default: the Hugging Face hub")
    max_length: int = _field(128, "tokens per input, template included")
    n_prompts: int = _field(4, "n_p: prompt slots in the template")
    cache_dir: str | None = _field(None, "Arrow store folder (default ~/.cache/infoprompt "
                                         "or $INFOPROMPT_CACHE)")

    # --- method ---
    method: Method = _field(Method.INFOPROMPT, "what is trained and with which losses")
    critic: Critic = _field(Critic.BILINEAR, "InfoNCE critic: bilinear (paper) or cosine")
    beta: float = _field(0.1, "β: weight of NCE_rep (eq. 11)")
    gamma: float = _field(0.05, "γ: weight of NCE_head (eq. 11)")
    k_negatives: int = _field(32, "K: one positive + K-1 negatives per InfoNCE")
    bottleneck: int = _field(64, "r: bottleneck width of the prompt generator (and adapters)")
    temperature: float = _field(0.1, "τ of the cosine critic")
    log_sigma_max: float = _field(2.0, "σ = exp(clamp(f_σ, ±this)) keeps the noise bounded")
    # Not the paper's: its estimator's critics ignore the prompt after one epoch
    # (BENCHMARKS.md, "InfoNCE estimators"); `paper` reproduces it.
    estimator: Estimator = _field(Estimator.IN_BATCH, "InfoNCE negatives: in_batch (the other "
                                                      "examples' Z samples and P̄) or paper "
                                                      "(the example's own Z' + noise, X's "
                                                      "tokens)")
    hard_negative: bool = _field(True, "in_batch: the example's own prompt-free sample "
                                       "μ(Z')+σ(Z')ε as one extra negative of NCE_rep")
    vib: float = _field(0.0, "weight of a VIB term: the head reads z = μ(Z)+σ(Z)ε (μ(Z) at "
                             "evaluation) and the loss adds vib·KL(N(μ,σ²) ‖ N(0,I)), "
                             "averaged over dimensions")

    # --- optimisation ---
    lr: float = _field(1e-3, "AdamW learning rate of the trainable parts")
    encoder_lr: float = _field(2e-5, "finetune only: learning rate of the encoder's weights")
    batch_size: int = _field(8, "training batch size")
    epochs: int = _field(30, "training epochs")
    warmup_ratio: float = _field(0.06, "fraction of steps of linear warm-up, then linear decay")
    weight_decay: float = _field(0.01, "AdamW weight decay")
    max_grad_norm: float = _field(1.0, "gradient clipping norm")
    bf16: bool = _field(False, "bf16 autocast (CPU and CUDA)")
    device: str = _field("auto", "auto (cuda when available, else cpu), cpu, cuda, cuda:N")
    eval_batch_size: int = _field(64, "batch size for evaluation")
    diagnostics: bool = _field(True, "log each epoch: both NCE terms with P̄ shuffled across "
                                     "the batch, and each term's gradient norm on the generator")

    def __post_init__(self) -> None:
        # Checked here, not when the data loads: both CLIs refuse it before importing torch.
        if not isinstance(self.task, str) or self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; choose one of: {', '.join(TASKS)}")
        if self.task == "custom" and not self.data_dir:
            raise ConfigError("--task custom reads your data from --data-dir DIR, a folder "
                              "with a task.json (see README, 'Data')")
        if not _integral(self.seed) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")
        for name, enum in _ENUMS.items():
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum(value))
            except ValueError:
                raise ConfigError(f"unknown {name} {value!r}; choose one of: "
                                  f"{_choices(enum)}") from None
        for name in ("beta", "gamma", "vib"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if not _integral(self.k_negatives) or self.k_negatives < 2:
            raise ConfigError(f"k_negatives (K) must be an integer >= 2, got {self.k_negatives!r}")
        object.__setattr__(self, "k_negatives", int(self.k_negatives))
        if not _integral(self.bottleneck):  # int() would silently truncate 0.5 to 0
            raise ConfigError(f"bottleneck must be an integer >= 1, got {self.bottleneck!r}")
        object.__setattr__(self, "bottleneck", int(self.bottleneck))
        for name in ("lr", "encoder_lr", "temperature", "max_grad_norm", "log_sigma_max"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("bottleneck", "batch_size", "epochs", "n_prompts", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.estimator is Estimator.IN_BATCH and self.batch_size < 2:
            raise ConfigError("estimator in_batch contrasts the examples of a batch: it needs "
                              f"batch_size >= 2, got {self.batch_size!r}")
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
        return self.beta if self.method.uses_rep_loss else 0.0

    @property
    def effective_gamma(self) -> float:
        return self.gamma if self.method.uses_head_loss else 0.0

    @property
    def effective_vib(self) -> float:
        """The VIB weight: zero for methods without f_μ and f_σ (no critics)."""
        return self.vib if self.method.uses_critics else 0.0

    @property
    def nce_candidates(self) -> tuple[int, int]:
        """K of the bound log K − NCE of NCE_rep and of NCE_head. Under in_batch, a full
        batch's (a smaller last batch scores fewer), without the hard negative: it is not a
        draw from the marginal, so it only raises NCE and log B still holds (log(B+1) would
        overstate the bound by 0.12 nats at B = 8)."""
        if self.estimator is Estimator.PAPER:
            return self.k_negatives, self.k_negatives
        return self.batch_size, self.batch_size

    @property
    def unused_fields(self) -> frozenset[str]:
        """Fields that change nothing this configuration trains (a search leaves them alone:
        varying them would only feed noise to the sampler)."""
        method = self.method
        mi_loss = method.uses_rep_loss or method.uses_head_loss
        unused = set()
        if not method.uses_rep_loss:
            unused.add("beta")
        if not method.uses_rep_loss and not self.effective_vib:  # σ: NCE_rep's and VIB's
            unused.add("log_sigma_max")
        if not method.uses_head_loss:
            unused.add("gamma")
        if not mi_loss:
            unused.add("estimator")
        if not mi_loss or self.estimator is Estimator.IN_BATCH:  # in_batch: K is the batch
            unused.add("k_negatives")
        if not method.uses_rep_loss or self.estimator is not Estimator.IN_BATCH:
            unused.add("hard_negative")
        if not method.uses_critics:
            unused.add("vib")
        if not mi_loss or self.critic is not Critic.COSINE:
            unused.add("temperature")
        if not method.uses_bottleneck:
            unused.add("bottleneck")
        if not method.trains_encoder:
            unused.add("encoder_lr")
        return frozenset(unused)

    def replace(self, **changes: Any) -> InfoPromptConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update({name: getattr(self, name).value for name in _ENUMS})
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> InfoPromptConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return cls(**values)
