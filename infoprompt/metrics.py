"""Task metrics (scikit-learn), and how two configurations' metrics compare."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

__all__ = ["classification_metrics", "paired_difference"]


def classification_metrics(labels: Sequence[int], predictions: Sequence[int],
                           num_labels: int) -> dict[str, float]:
    """accuracy and MCC always; F1 of the positive class for binary tasks (MRPC's second
    GLUE metric)."""
    out = {"accuracy": float(accuracy_score(labels, predictions)),
           "mcc": float(matthews_corrcoef(labels, predictions))}
    if num_labels == 2:
        out["f1"] = float(f1_score(labels, predictions, zero_division=0))
    return out


def paired_difference(a: Sequence[float], b: Sequence[float], *,
                      confidence: float = 0.95) -> dict[str, Any]:
    """a − b, paired by position (the same seed, so the same splits): the per-seed
    differences, their mean and its Student-t confidence interval, and the words the interval
    allows. Pairs where either side is not finite (a diverged run) are left out and counted."""
    from scipy import stats

    pairs = [(x, y) for x, y in zip(a, b, strict=True) if math.isfinite(x) and math.isfinite(y)]
    differences = [x - y for x, y in pairs]
    n = len(differences)
    mean = statistics.fmean(differences) if n else math.nan
    if n >= 2:
        half = (stats.t.ppf((1 + confidence) / 2, n - 1) * statistics.stdev(differences)
                / math.sqrt(n))
        low, high = mean - half, mean + half
    else:
        low = high = math.nan
    if n >= 2 and low > 0:
        verdict = "better"
    elif n >= 2 and high < 0:
        verdict = "worse"
    else:
        verdict = "no difference shown"
    return {"per_seed": differences, "n": n, "left_out": len(a) - n, "mean": mean,
            "ci": [low, high], "confidence": confidence, "verdict": verdict}
