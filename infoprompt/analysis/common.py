"""What the three analyses share: loading a task, training a method, writing results."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from infoprompt.config import InfoPromptConfig, Method
from infoprompt.store import Splits
from infoprompt.train import Training

__all__ = ["describe", "pyplot", "save_figure", "trained", "write_outputs"]


def trained(cfg: InfoPromptConfig, method: Method, splits: Splits,
            log=print) -> Training:
    """A run of `method` trained for cfg.epochs, its best-valid epoch's parameters loaded
    (as `Training.test` scores them)."""
    training = Training(cfg.replace(method=method), splits.without_test())
    for record in training.epochs():
        log(f"  {method.value} epoch {record['epoch']}: valid {record['valid_metric']:.4f}")
    if training.best_state is not None:
        training.model.load_state_dict(training.best_state, strict=False)
    return training


def describe(values: list[float]) -> dict[str, float]:
    """Mean, std and quantiles of a sample (the JSON summary of one distribution)."""
    ordered = torch.tensor(values, dtype=torch.float64)
    quantiles = torch.quantile(ordered, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9],
                                                     dtype=torch.float64)).tolist()
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            **dict(zip(("q10", "q25", "median", "q75", "q90"), quantiles))}


def write_outputs(out: Path, name: str, result: dict[str, Any],
                  plot: Callable[[dict[str, Any], Path], None]) -> None:
    """out/<name>.json (the figure's data) and out/<name>.png drawn from it by `plot`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    plot(result, out / f"{name}.png")


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> None:
    """A small PNG (BENCHMARKS.md links them from the repository), the figure closed."""
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    pyplot().close(figure)
