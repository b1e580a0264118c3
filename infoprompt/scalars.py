"""A run's per-epoch record as TensorBoard scalars, in reading order.

TensorBoard's Time Series sorts groups by name and opens the first one, so each group's
name starts with its place: the objective first, then the valid metrics, the loss and its
terms, the MI bounds, the diagnostics, the optimizer. A single run (`python -m infoprompt`)
and every trial of a search (tune/tensorboard_callback.py) write the same tags.
"""

from __future__ import annotations

from typing import Any

from infoprompt.config import InfoPromptConfig

__all__ = ["OBJECTIVE_TAG", "off_terms", "scalars", "tag"]

_ORDER = ("objective", "valid", "loss", "mi", "diagnostics", "optim")
_GROUP_OF = {
    "objective": "objective",
    "valid_metric": "valid", "valid_loglik": "valid", "loss": "loss", "loss_pred": "loss",
    "nce_rep": "loss", "nce_head": "loss", "kl": "loss", "mi_rep": "mi", "mi_head": "mi",
    "lr": "optim", "epoch_seconds": "optim",
}
# Not scalars of the method: the epoch is the step, per-run bests are read off the curves.
_NOT_LOGGED = {"epoch", "best_epoch", "best_valid_metric"}
OBJECTIVE_TAG = "1_objective/objective"


def tag(name: str) -> str | None:
    """`valid_mcc` -> `2_valid/valid_mcc`; any other number a run reports (a new diagnostic)
    goes to the diagnostics group; None for what is not logged."""
    if name in _NOT_LOGGED:
        return None
    group = _GROUP_OF.get(name) or ("valid" if name.startswith("valid_") else "diagnostics")
    return f"{_ORDER.index(group) + 1}_{group}/{name}"


def off_terms(cfg: InfoPromptConfig) -> frozenset[str]:
    """Values a run records as a constant 0 because the term is off for this config: not
    worth a chart (the VIB's KL without --vib; the InfoNCE terms and bounds without critics;
    the prompt norm without prompts)."""
    off = set()
    if not cfg.effective_vib:
        off.add("kl")
    if not cfg.method.uses_critics:
        off |= {"nce_rep", "nce_head", "mi_rep", "mi_head"}
    if not cfg.method.uses_prompts:
        off.add("prompt_norm")
    return frozenset(off)


def scalars(record: dict[str, Any], off: frozenset[str] = frozenset()) -> dict[str, float]:
    """tag -> value for the numbers of a record, without the terms that are `off`."""
    out = {}
    for name, value in record.items():
        if name in off or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if (where := tag(name)) is not None:
            out[where] = float(value)
    return out
