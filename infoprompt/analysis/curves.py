"""Figure 3: learning curves of finished runs, read from their own histories (the
metrics.json of `python -m infoprompt`): the training task loss L_pred and the valid metric
per epoch, mean and ±1 std band over seeds, one curve per method, and the steps each method
takes to first reach a fraction of its final valid metric. Where the histories log the
conditional diagnostic `cmi_prompt`, its band is in the JSON too.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from infoprompt.config import InfoPromptConfig, Method
from infoprompt.errors import InfoPromptError

from infoprompt.analysis.common import pyplot, save_figure, write_outputs

__all__ = ["add_arguments", "label", "load_runs", "main", "steps_to_fraction"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path,
                        help="run folders or metrics.json files of `python -m infoprompt`")
    parser.add_argument("--fraction", type=float, default=0.9,
                        help="report the steps to reach this fraction of the final valid "
                             "metric (default: 0.9)")


def label(summary: dict[str, Any]) -> str:
    """The method, and the estimator where it is not the default one."""
    config = summary["config"]
    name = summary["method"]
    if (Method(name).uses_critics
            and config.get("estimator") != InfoPromptConfig().estimator.value):
        name += f" ({config['estimator']} estimator)"
    return name


def load_runs(paths: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """label -> the runs' metrics.json contents, seeds in order."""
    runs = defaultdict(list)
    for path in paths:
        file = path / "metrics.json" if path.is_dir() else path
        try:
            summary = json.loads(file.read_text())
            history = summary["history"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InfoPromptError(f"{file} is not a run's metrics.json ({error}); pass the "
                                  "folders `python -m infoprompt --out` wrote") from None
        if not history:
            raise InfoPromptError(f"{file} has an empty history")
        runs[label(summary)].append(summary)
    return {name: sorted(group, key=lambda s: s["seed"]) for name, group in runs.items()}


def steps_per_epoch(summary: dict[str, Any]) -> int | None:
    """The few-shot train split holds `shots` rows; with shots 'all' its size is not recorded."""
    config = summary["config"]
    return math.ceil(config["shots"] / config["batch_size"]) if config.get("shots") else None


def steps_to_fraction(valid: list[float], fraction: float) -> int | None:
    """The first epoch whose valid metric reaches `fraction` of the last epoch's (None when
    the final metric is not positive: a fraction of it means nothing)."""
    final = valid[-1]
    if final <= 0:
        return None
    return next(epoch for epoch, value in enumerate(valid, 1) if value >= fraction * final)


def _band(series: list[list[float]]) -> dict[str, list[float]]:
    epochs = min(map(len, series))
    columns = [[s[e] for s in series] for e in range(epochs)]
    return {"mean": [statistics.fmean(c) for c in columns],
            "std": [statistics.stdev(c) if len(c) > 1 else 0.0 for c in columns]}


def summarise(runs: dict[str, list[dict[str, Any]]], fraction: float) -> dict[str, Any]:
    out = {}
    for name, group in runs.items():
        valid = [[r["valid_metric"] for r in s["history"]] for s in group]
        epochs = [steps_to_fraction(v, fraction) for v in valid]
        spe = steps_per_epoch(group[0])
        reached = [e for e in epochs if e is not None]
        out[name] = {
            "seeds": [s["seed"] for s in group], "steps_per_epoch": spe,
            "loss_pred": _band([[r["loss_pred"] for r in s["history"]] for s in group]),
            "valid_metric": _band(valid),
            "final_valid_metric": [v[-1] for v in valid],
            "best_valid_metric": [max(v) for v in valid],
            "epochs_to_fraction": epochs,
            "steps_to_fraction": [None if e is None or spe is None else e * spe for e in epochs],
            "mean_steps_to_fraction": (statistics.fmean(reached) * spe
                                       if reached and spe else None),
        }
        if all("cmi_prompt" in r for s in group for r in s["history"]):  # the diagnostic, too
            out[name]["cmi_prompt"] = _band([[r["cmi_prompt"] for r in s["history"]]
                                             for s in group])
    return out


def _plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, curves in result["methods"].items():
        spe = curves["steps_per_epoch"] or 1
        for axis, key in zip(axes, ("loss_pred", "valid_metric")):
            mean, std = curves[key]["mean"], curves[key]["std"]
            x = [spe * e for e in range(1, len(mean) + 1)]
            line, = axis.plot(x, mean, label=f"{name} ({len(curves['seeds'])} seeds)")
            axis.fill_between(x, [m - s for m, s in zip(mean, std)],
                              [m + s for m, s in zip(mean, std)], alpha=0.2,
                              color=line.get_color())
    unit = "step" if all(c["steps_per_epoch"] for c in result["methods"].values()) else "epoch"
    axes[0].set_yscale("log")
    axes[0].set_title("training task loss L_pred (epoch mean)", fontsize=10)
    axes[1].set_title(f"valid {result['metric']}", fontsize=10)
    for axis in axes:
        axis.set_xlabel(unit)
    axes[1].legend(fontsize=8)
    figure.suptitle(f"{result['task']}: mean ± 1 std over seeds", fontsize=10)
    save_figure(figure, path)


def main(cfg: InfoPromptConfig, args: argparse.Namespace) -> dict[str, Any]:
    if not 0 < args.fraction <= 1:
        raise InfoPromptError(f"--fraction must be in (0, 1], got {args.fraction}")
    runs = load_runs(args.runs)
    tasks = {s["task"] for group in runs.values() for s in group}
    if len(tasks) != 1:
        raise InfoPromptError(f"the runs are of several tasks ({', '.join(sorted(tasks))}); "
                              "draw one task at a time")
    task = tasks.pop()
    from infoprompt.tasks import TASKS

    result = {"task": task, "metric": TASKS[task].metric, "fraction": args.fraction,
              "methods": summarise(runs, args.fraction)}
    write_outputs(args.out, "curves", result, _plot)
    for name, curves in result["methods"].items():
        steps = curves["mean_steps_to_fraction"]
        print(f"{name:>28}: final valid {statistics.fmean(curves['final_valid_metric']):.4f}, "
              f"{args.fraction:g} of it after "
              f"{'n/a' if steps is None else f'{steps:.0f}'} steps (seeds {curves['seeds']})"
              + (f", last-epoch cmi_prompt {curves['cmi_prompt']['mean'][-1]:.3f}"
                 if "cmi_prompt" in curves else ""))
    print(f"-> {args.out / 'curves.png'}, {args.out / 'curves.json'}")
    return result
