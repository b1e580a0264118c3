"""Task metrics, from scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

__all__ = ["classification_metrics"]


def classification_metrics(labels: Sequence[int], predictions: Sequence[int],
                           num_labels: int) -> dict[str, float]:
    """accuracy and MCC always; F1 of the positive class for binary tasks (MRPC's second
    GLUE metric)."""
    out = {"accuracy": float(accuracy_score(labels, predictions)),
           "mcc": float(matthews_corrcoef(labels, predictions))}
    if num_labels == 2:
        out["f1"] = float(f1_score(labels, predictions, zero_division=0))
    return out
