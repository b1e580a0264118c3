"""What a search ends with: `summarize` computes (pure), the writers only format.

results.json (machine), results.md (a person), search.png (valid metric per epoch for
every trial, and Optuna's hyperparameter importances).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, NamedTuple

from infoprompt.errors import InfoPromptError

__all__ = ["Summary", "TrialRow", "final_stats", "plot", "summarize", "trial_rows",
           "tune_statuses", "write_json", "write_markdown"]


class TrialRow(NamedTuple):
    trial_id: str
    config: dict[str, Any]
    status: str  # completed | stopped early | unfinished | error: …
    epochs: int
    last_valid_metric: float | None
    best_valid_metric: float | None
    node_ip: str | None
    curve: list[float]  # valid metric per epoch


class Summary(NamedTuple):
    task: str
    metric: str
    method: str
    best_config: dict[str, Any]
    best_valid_metric: float
    trials: list[TrialRow]
    final: dict[str, Any]  # "best" / "default" -> per-seed test metrics, mean, std

    @property
    def stopped_early(self) -> int:
        return sum(t.status == "stopped early" for t in self.trials)


def tune_statuses(result_grid: Any) -> list[str | None]:
    """Tune's status of each trial, in the grid's order: TERMINATED (ran to its end or was
    stopped by ASHA), ERROR, or RUNNING / PAUSED / PENDING (unfinished: an interrupted search;
    a Result says none of this). None for each when the grid is not Tune's (tests)."""
    trials = getattr(getattr(result_grid, "_experiment_analysis", None), "trials", None)
    if trials is None or len(trials) != len(result_grid):
        return [None] * len(result_grid)
    return [getattr(trial, "status", None) for trial in trials]


def trial_rows(result_grid: Any, max_epochs: int) -> list[TrialRow]:
    rows = []
    for result, tune_status in zip(result_grid, tune_statuses(result_grid)):
        frame = result.metrics_dataframe
        curve = ([float(v) for v in frame["valid_metric"].dropna()]
                 if frame is not None and "valid_metric" in frame else [])
        metrics = result.metrics or {}
        epochs = int(metrics.get("epoch", len(curve)) or 0)
        if result.error is not None:
            status = "error: " + str(result.error).strip().splitlines()[-1][:200]
        elif tune_status == "ERROR":
            status = "error: (no message saved; see the trial's error.txt)"
        elif tune_status not in (None, "TERMINATED"):
            status = "unfinished"  # ASHA did not stop it: the search did not get to it
        elif epochs < max_epochs:
            status = "stopped early"
        else:
            status = "completed"
        rows.append(TrialRow(
            # A trial that failed before its first report has no metrics: its folder
            # (trial_<id>, see tuner.py) names it.
            trial_id=metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_"),
            config=dict(result.config or {}), status=status, epochs=epochs,
            last_valid_metric=curve[-1] if curve else None,
            best_valid_metric=max(curve) if curve else None,
            node_ip=metrics.get("node_ip"), curve=curve))
    return rows


def final_stats(per_seed: list[float]) -> dict[str, Any]:
    """Mean and std over the seeds that finished; a diverged seed (NaN) is counted apart."""
    finite = [v for v in per_seed if math.isfinite(v)]
    return {"per_seed": per_seed,
            "mean": statistics.fmean(finite) if finite else math.nan,
            "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
            "diverged": len(per_seed) - len(finite)}


def summarize(*, task: str, metric: str, method: str, trials: list[TrialRow],
              final: dict[str, Any]) -> Summary:
    # An errored trial (diverged, or out of retries) is never the best, even if it reported
    # a metric before failing: Optuna was told it failed, and its config would not re-train.
    scored = [t for t in trials if t.best_valid_metric is not None
              and math.isfinite(t.best_valid_metric) and not t.status.startswith("error")]
    if not scored:
        raise InfoPromptError(
            f"none of the {len(trials)} trials finished with a valid metric ("
            + "; ".join(sorted({t.status for t in trials})[:3]) + ")")
    best = max(scored, key=lambda t: t.best_valid_metric)
    return Summary(task, metric, method, best.config, best.best_valid_metric, trials, final)


def write_json(summary: Summary, path: Path) -> None:
    body = {
        "task": summary.task, "metric": summary.metric, "method": summary.method,
        "best_config": summary.best_config, "best_valid_metric": summary.best_valid_metric,
        "final": summary.final,
        "trials": [t._asdict() for t in summary.trials],
        "stopped_early": summary.stopped_early,
    }
    path.write_text(json.dumps(body, indent=2))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


def write_markdown(summary: Summary, path: Path) -> None:
    names = sorted({k for t in summary.trials for k in t.config})
    lines = [f"# Search: {summary.task}, {summary.method}", "",
             f"Best valid {summary.metric}: **{summary.best_valid_metric:.4f}** with "
             + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(summary.best_config.items())), ""]
    if summary.final:
        lines += [f"## Test {summary.metric} (GLUE dev), re-trained from scratch", "",
                  "| config | mean ± std | per seed |", "|---|---|---|"]
        for label, stats in summary.final.items():
            if not isinstance(stats, dict) or "mean" not in stats:
                continue
            seeds = ", ".join(f"{v:.4f}" for v in stats["per_seed"])
            lines.append(f"| {label} | {stats['mean']:.4f} ± {stats['std']:.4f} | {seeds} |")
        lines.append("")
    lines += [f"## Trials ({len(summary.trials)}, {summary.stopped_early} stopped early by ASHA)",
              "", "| trial | " + " | ".join(names) + " | epochs | best valid | status |",
              "|---" * (len(names) + 4) + "|"]
    for t in sorted(summary.trials, key=lambda t: -(t.best_valid_metric or -math.inf)):
        cells = [t.trial_id] + [_fmt(t.config.get(n)) for n in names]
        cells += [str(t.epochs), _fmt(t.best_valid_metric), t.status]
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def importances(summary: Summary) -> dict[str, float]:
    """Optuna's fANOVA importances over the finished trials (empty when too few)."""
    import optuna

    trials = [t for t in summary.trials if t.best_valid_metric is not None]
    names = sorted({k for t in trials for k in t.config})
    if len(trials) < 3 or not names:
        return {}
    distributions = {}
    for name in names:
        values = [t.config[name] for t in trials]
        distributions[name] = (
            optuna.distributions.CategoricalDistribution(sorted(set(values)))
            if all(isinstance(v, int) for v in values)
            else optuna.distributions.FloatDistribution(min(values), max(values), log=True))
    study = optuna.create_study(direction="maximize")
    for t in trials:
        study.add_trial(optuna.trial.create_trial(
            params={k: t.config[k] for k in names}, distributions=distributions,
            value=t.best_valid_metric))
    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. every trial scored the same
        return {}


def plot(summary: Summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curves, bars) = plt.subplots(1, 2, figsize=(11, 4))
    for t in summary.trials:
        if t.curve:
            curves.plot(range(1, len(t.curve) + 1), t.curve, marker=".", alpha=0.7)
    curves.set(xlabel="epoch", ylabel=f"valid {summary.metric}",
               title=f"{len(summary.trials)} trials ({summary.stopped_early} stopped by ASHA)")
    weights = importances(summary)
    bars.barh(list(weights), list(weights.values()))
    bars.set(title="hyperparameter importance (Optuna fANOVA)", xlabel="importance")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
