"""The one number a search selects by. Every epoch's report carries it as `objective`; Tune's
metric, ASHA's rungs, Optuna's trial values, the TensorBoard HParams metric and results.json
all read that key, so they can never disagree on a trial's value."""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum
from typing import Any

__all__ = ["Objective", "objective_value"]

# Below any difference in a task metric worth a word: 1/64 of accuracy is 0.016, and an MCC
# on 64 examples moves in steps far above 1e-4.
TIE_BREAK_SCALE = 1e-4


class Objective(str, Enum):
    BEST = "best"
    LAST = "last"
    LOGLIK = "loglik"
    BEST_LOGLIK = "best_loglik"

    @property
    def definition(self) -> str:
        return {
            Objective.BEST: "the best valid metric over the epochs so far",
            Objective.LAST: "the valid metric of the latest epoch",
            Objective.LOGLIK: "the best mean log-likelihood of the gold valid labels over the "
                              "epochs so far",
            Objective.BEST_LOGLIK: "the best valid metric over the epochs so far, ties broken "
                                   f"by that epoch's valid log-likelihood (metric + "
                                   f"{TIE_BREAK_SCALE:g} * exp(loglik))",
        }[self]


def objective_value(history: Sequence[dict[str, Any]], objective: Objective | str) -> float:
    """The objective after the last epoch of `history` (the records `Training.epochs()`
    yields, or their mean over cross-validation folds)."""
    objective = Objective(objective)
    if objective is Objective.LAST:
        return history[-1]["valid_metric"]
    if objective is Objective.LOGLIK:
        return max(record["valid_loglik"] for record in history)
    if objective is Objective.BEST:
        return max(record["valid_metric"] for record in history)
    if objective is Objective.BEST_LOGLIK:
        return max(record["valid_metric"] + TIE_BREAK_SCALE * math.exp(record["valid_loglik"])
                   for record in history)
    raise ValueError(f"unknown objective {objective!r}")
