"""Optuna's own plots of a search's study, as PNGs beside results.json: one title each, the
axes named after the objective and its unit rather than Optuna's "Objective Value"."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

__all__ = ["PLOTS", "objective_label", "plots", "write_plots"]

# Optuna's own plots, saved beside results.json: file -> what it shows.
PLOTS = {"optimization_history.png": "plot_optimization_history",
         "intermediate_values.png": "plot_intermediate_values",
         "parallel_coordinate.png": "plot_parallel_coordinate",
         "param_importances.png": "plot_param_importances"}
# Optuna's generic axis and legend words -> what they are in this search ({} is the
# objective's label, objective_label).
RENAMES = {"Intermediate Value": "{}", "Step": "epoch", "Trial": "trial (Optuna's number)"}
TITLES = {"plot_intermediate_values": "The objective after each epoch, per trial",
          "plot_optimization_history": "The objective of each trial"}
UNITS = {"accuracy": "0 to 1", "mcc": "-1 to 1", "f1": "0 to 1"}


def objective_label(objective: str, metric: str) -> str:
    """The objective as an axis names it, with its range or unit: 'best valid accuracy
    (0 to 1)'."""
    if objective == "loglik":
        return "best valid log-likelihood (nats)"
    what = {"best": f"best valid {metric}", "last": f"valid {metric}, latest epoch",
            "best_loglik": f"best valid {metric}, log-likelihood tie-break"}[objective]
    return f"{what} ({UNITS.get(metric, metric)})"


def plots(study: Any, label: str) -> tuple[dict[str, Any], list[str]]:
    """Optuna's matplotlib plots of the study, file name -> figure, each with one title and
    its axes named after the objective (`label`); and a note for each plot left out (and
    why)."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    figures, notes = {}, []
    for file, function in PLOTS.items():
        kwargs: dict[str, Any] = {}
        title = TITLES.get(function)
        if function == "plot_param_importances":
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()  # Optuna's default
            reason = _importance_problem(study, evaluator, len(finished))
            if reason:
                notes.append(f"{file} left out: {reason}")
                continue
            kwargs["evaluator"] = evaluator
            title = f"Hyperparameter importances (PED-ANOVA, {len(finished)} finished trials)"
        elif not finished:
            notes.append(f"{file} left out: no finished trial")
            continue
        if function != "plot_intermediate_values":  # it takes no name: renamed below
            kwargs["target_name"] = label
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the matplotlib backend is "experimental"
            axes = getattr(optuna_plots, function)(study, **kwargs)
        figure = axes.figure
        _retitle(axes, title, label, short_legend=function == "plot_optimization_history")
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        figures[file] = figure
    return figures, notes


def _retitle(axes: Any, title: str | None, label: str, *, short_legend: bool) -> None:
    """One title, centred (Optuna's is left-aligned: a second one would overlap it); axis,
    tick and colour-bar words renamed by RENAMES. A `short_legend` (the optimization
    history's, beside its axes) says "objective" where the y-axis has the whole label."""
    title = title or axes.get_title("left") or axes.get_title()
    for where in ("left", "right"):
        axes.set_title("", loc=where)
    axes.set_title(title)
    for ax in axes.figure.axes:
        for get, put in ((ax.get_xlabel, ax.set_xlabel), (ax.get_ylabel, ax.set_ylabel)):
            if get() in RENAMES:
                put(RENAMES[get()].format(label))
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        if any(t in RENAMES for t in ticks):  # the parallel-coordinates plot's first axis
            ax.set_xticks(ax.get_xticks(), [RENAMES.get(t, t).format(label) for t in ticks])
        legend = ax.get_legend() if short_legend else None
        for text in legend.get_texts() if legend is not None else []:
            names = {label: "objective", "Best Value": "best so far"}
            text.set_text(names.get(text.get_text(), text.get_text()))


def write_plots(study: Any, folder: Path, label: str = "objective") -> list[str]:
    """`plots` as PNGs in `folder`; returns the notes of the plots left out."""
    import matplotlib.pyplot as plt

    figures, notes = plots(study, label)
    for file, figure in figures.items():
        figure.savefig(folder / file, dpi=100)
        plt.close(figure)
    return notes


def _importance_problem(study: Any, evaluator: Any, finished: int) -> str | None:
    """Why the importances would mean nothing, or None."""
    import optuna

    if finished < 2:
        return (f"{type(evaluator).__name__} needs at least 2 finished trials, this search "
                f"has {finished}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optuna.importance.get_param_importances(study, evaluator=evaluator)
    equal = [str(w.message) for w in caught if "will be equal" in str(w.message)]
    if equal:
        return f"{type(evaluator).__name__}: {equal[0]} ({finished} finished trials)"
    return None
