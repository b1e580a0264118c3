"""What a search ends with: `summarize` computes (pure), the writers only format.

results.json (machine), results.md (a person); Optuna's own plots of the study are written
by tune/study.py.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, NamedTuple

from infoprompt.errors import InfoPromptError
from infoprompt.tasks import METRIC_TITLES, get_task

__all__ = ["Summary", "TrialRow", "final_comparison", "final_stats", "final_table",
           "model_lines", "rerank_table", "summarize", "trial_rows", "tune_statuses",
           "write_json", "write_markdown"]


class TrialRow(NamedTuple):
    trial_id: str
    config: dict[str, Any]
    status: str  # completed | stopped early | unfinished | error: …
    epochs: int
    objective: float | None  # the last reported objective: what the search ranked it by
    last_valid_metric: float | None
    best_valid_metric: float | None
    node_ip: str | None
    curve: list[float]  # valid metric per epoch
    name: str = ""  # trial_<Optuna number>_<Ray id>: its folder, TensorBoard run, Optuna attr


class Summary(NamedTuple):
    task: str
    metric: str
    method: str
    best_config: dict[str, Any]
    best_objective: float
    best_valid_metric: float | None
    trials: list[TrialRow]
    final: dict[str, Any]  # "returned" / "default" -> per seed, mean, std; "paired": the
    # returned − default
    search: dict[str, Any] = {}  # objective, sampler, scheduler, split seeds, versions
    rerank: dict[str, Any] = {}  # tune/rerank.py's table and decision; empty: no re-rank

    @property
    def returned_config(self) -> dict[str, Any]:
        """What the search hands back: the re-rank's decision, else the search's best."""
        return self.rerank["decision"]["config"] if self.rerank else self.best_config

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
        folder = Path(result.path).name  # the trial's name (tuner.trial_name)
        rows.append(TrialRow(
            # A trial that failed before its first report has no metrics: its folder
            # (trial_<number>_<id>) names it.
            trial_id=metrics.get("trial_id") or folder.split("_", 2)[-1], name=folder,
            config=dict(result.config or {}), status=status, epochs=epochs,
            objective=metrics.get("objective"),
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


def final_comparison(returned: list[float], default: list[float]) -> dict[str, Any]:
    """The returned config against the default on the same seeds (the same splits): the
    paired differences, their mean and 95% CI, and the words the interval allows."""
    from infoprompt.metrics import paired_difference

    return {"paired": {"of": "returned - default", **paired_difference(returned, default)}}


def summarize(*, task: str, metric: str, method: str, trials: list[TrialRow],
              final: dict[str, Any], search: dict[str, Any] | None = None) -> Summary:
    # An errored trial (diverged, or out of retries) is never the best, even if it reported
    # before failing: Optuna was told it failed, and its config would not re-train.
    scored = [t for t in trials if t.objective is not None and math.isfinite(t.objective)
              and not t.status.startswith("error")]
    if not scored:
        raise InfoPromptError(
            f"none of the {len(trials)} trials finished with a valid metric ("
            + "; ".join(sorted({t.status for t in trials})[:3]) + ")")
    best = max(scored, key=lambda t: t.objective)
    return Summary(task, metric, method, best.config, best.objective, best.best_valid_metric,
                   trials, final, search or {})


def write_json(summary: Summary, path: Path) -> None:
    body = {
        "task": summary.task, "metric": summary.metric, "method": summary.method,
        "objective": summary.search.get("objective"),
        "returned_config": summary.returned_config,
        "best_config": summary.best_config, "best_objective": summary.best_objective,
        "best_valid_metric": summary.best_valid_metric,
        "split_seeds": summary.search.get("split_seeds"),
        "rerank": summary.rerank,
        "final": summary.final,
        "search": summary.search,
        "trials": [t._asdict() for t in summary.trials],
        "stopped_early": summary.stopped_early,
    }
    path.write_text(json.dumps(body, indent=2))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


VERDICTS = {
    "better": "the returned config is **better** than the default on test (the interval lies "
              "above 0)",
    "worse": "the returned config is **worse** than the default on test (the interval lies "
             "below 0)",
    "no difference shown": "**no difference shown** (the interval holds 0)",
}


def final_table(summary: Summary) -> list[str]:
    """Markdown: returned vs default, seed by seed, with the paired difference and its CI."""
    final = summary.final
    best, default = final.get("returned"), final.get("default")
    if not best:
        return []
    test = "GLUE dev" if get_task(summary.task).glue_name else "the task's test split"
    lines = [f"## Test {summary.metric} ({test}), re-trained from scratch on split seeds "
             f"{_seeds(best['seeds'])}", ""]
    title = METRIC_TITLES.get(summary.metric, summary.metric)
    if title != summary.metric:  # "`accuracy`: accuracy." says nothing
        lines += [f"`{summary.metric}`: {title}.", ""]
    if default is None or default["config"] == best["config"]:
        lines += ["The returned configuration is the default one: nothing to compare.", "",
                  "| seed | test |", "|---|---|"]
        lines += [f"| {seed} | {v:.4f} |" for seed, v in zip(best["seeds"], best["per_seed"])]
        return lines + [f"| mean ± std | {best['mean']:.4f} ± {best['std']:.4f} |", ""]
    paired = final["paired"]
    lines += ["| seed | returned | default | returned − default |", "|---|---|---|---|"]
    for seed, b, d in zip(best["seeds"], best["per_seed"], default["per_seed"]):
        lines.append(f"| {seed} | {b:.4f} | {d:.4f} | {b - d:+.4f} |")
    low, high = paired["ci"]
    lines += [f"| mean ± std | {best['mean']:.4f} ± {best['std']:.4f} | "
              f"{default['mean']:.4f} ± {default['std']:.4f} | {paired['mean']:+.4f} |", "",
              f"Returned − default, paired over {paired['n']} seeds (the same splits): "
              f"{paired['mean']:+.4f}, 95% CI [{low:+.4f}, {high:+.4f}]: "
              f"{VERDICTS[paired['verdict']]}.", ""]
    return lines


def _seeds(seeds: list[int]) -> str:
    return f"{seeds[0]}–{seeds[-1]}" if len(seeds) > 2 else ", ".join(map(str, seeds))


def _config(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(config.items()))


def _returned(summary: Summary) -> str:
    if not summary.rerank:
        return "the search's best, not re-ranked"
    label = summary.rerank["decision"]["returned"]
    return ("the paper's default, kept by the re-rank" if label == "default" else
            f"trial {label}, which beat the default in the re-rank")


def rerank_table(summary: Summary) -> list[str]:
    """Markdown: the re-rank's configs on its draws, each challenger against the default."""
    rerank = summary.rerank
    if not rerank:
        return []
    seeds = rerank["seeds"]
    lines = [f"## Re-rank on split seeds {_seeds(seeds)} (the search never saw them)", "",
             f"Objective on each draw's valid split; {rerank['test']}.", "",
             "| config | search objective | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean | − default [CI] |", "|---" * (len(seeds) + 4) + "|"]
    for row in rerank["rows"]:
        paired = row.get("vs_default")
        diff = "–" if paired is None else (
            f"{paired['mean']:+.4f} [{paired['ci'][0]:+.4f}, {paired['ci'][1]:+.4f}]"
            + (" **resolved**" if row["resolved_better"] else ""))
        cells = [f"{row['label']}: {_config(row['config'])}", _fmt(row.get("search_objective"))]
        cells += [_fmt(v) for v in row["per_seed"]] + [_fmt(row["mean"]), diff]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", f"**Decision:** {rerank['decision']['reason']}.", ""]


def model_lines(summary: Summary) -> list[str]:
    """Markdown: where the returned config's trained models are and the command that uses
    one."""
    returned = summary.final.get("returned") or {}
    if not returned.get("models"):
        return []
    chosen = returned["model_by_valid"]
    return ["## The trained model", "",
            f"The returned config's model of each final seed is saved in "
            f"`{chosen.rsplit('/', 1)[0]}/seed_<n>` (safetensors and JSON). The seed with the "
            f"best valid {summary.metric} (not test: it is not chosen on the split it is "
            f"scored on) classifies new text with:", "",
            f"    python -m infoprompt predict --model-dir {chosen} --input FILE", ""]


def write_markdown(summary: Summary, path: Path) -> None:
    names = sorted({k for t in summary.trials for k in t.config})
    objective = summary.search.get("objective") or {}
    seeds = summary.search.get("split_seeds") or {}
    lines = [f"# Search: {summary.task}, {summary.method}", "",
             f"**Returned:** {_config(summary.returned_config)} ({_returned(summary)})", "",
             f"Best objective in the search ({objective.get('name', 'objective')}: "
             f"{objective.get('definition', '')}): **{summary.best_objective:.4f}** with "
             + _config(summary.best_config), ""]
    if seeds:
        lines += ["Split seeds: " + "; ".join(f"{stage} {_seeds(s) if s else 'none'}"
                                              for stage, s in seeds.items()), ""]
    lines += rerank_table(summary)
    lines += final_table(summary)
    lines += model_lines(summary)
    lines += [f"## Trials ({len(summary.trials)}, {summary.stopped_early} stopped early by ASHA)",
              "", "| trial | " + " | ".join(names) + " | epochs | objective | best valid | "
              "status |", "|---" * (len(names) + 5) + "|"]
    for t in sorted(summary.trials, key=lambda t: -(t.objective or -math.inf)):
        cells = [t.name or t.trial_id] + [_fmt(t.config.get(n)) for n in names]
        cells += [str(t.epochs), _fmt(t.objective), _fmt(t.best_valid_metric), t.status]
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")
