"""Task metrics (scikit-learn), and how two configurations' metrics compare."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, matthews_corrcoef

if TYPE_CHECKING:
    from infoprompt.tasks import Task

__all__ = ["classification_metrics", "paired_difference", "semeval_f1",
           "task_metrics"]

def classification_metrics(labels: Sequence[int], predictions: Sequence[int],
                           num_labels: int) -> dict[str, float]:
    """accuracy and MCC always; F1 of the positive class for binary tasks (MRPC's second
    GLUE metric)."""
    out = {"accuracy": float(accuracy_score(labels, predictions)),
           "mcc": float(matthews_corrcoef(labels, predictions))}
    if num_labels == 2:
        out["f1"] = float(f1_score(labels, predictions, zero_division=0))
    return out


def semeval_f1(labels: Sequence[int], predictions: Sequence[int],
               label_names: Sequence[str]) -> float:
    """The official SemEval-2010 Task 8 score, as its Perl scorer (v1.2) computes it: for each
    relation R of the labels "R(e1,e2)" / "R(e2,e1)" ("Other" is not one), precision = the
    predictions exactly right (relation and direction) / every prediction of R in either
    direction, recall = the same / every gold R; F1 per relation; the mean of those F1s over
    the relations that occur in `labels` (the scorer divides by those it finds in its key)."""
    matrix = confusion_matrix(labels, predictions, labels=range(len(label_names)))
    relations: dict[str, list[int]] = {}
    for i, name in enumerate(label_names):
        if name != "Other":
            relations.setdefault(name.split("(")[0], []).append(i)
    scores = []
    for ids in relations.values():
        correct = sum(matrix[i, i] for i in ids)
        predicted, gold = matrix[:, ids].sum(), matrix[ids, :].sum()
        if gold:
            precision, recall = correct / max(predicted, 1), correct / gold
            scores.append(2 * precision * recall / (precision + recall) if correct else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def task_metrics(task: Task, labels: Sequence[int], predictions: Sequence[int]
                 ) -> dict[str, float]:
    """Every metric a run logs: `classification_metrics`, macro-F1, and the official SemEval
    score where it is the task's metric. `task.metric` is always among them."""
    out = classification_metrics(labels, predictions, task.num_labels)
    out["macro_f1"] = float(f1_score(labels, predictions, labels=range(task.num_labels),
                                     average="macro", zero_division=0))
    if task.metric == "semeval_f1":
        out["semeval_f1"] = semeval_f1(labels, predictions, task.label_names)
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
