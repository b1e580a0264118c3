"""tune/plots.py: Optuna's figures of a study, each with one title and its axes named after the
objective and its unit (the search saves them as PNGs)."""

from __future__ import annotations

import optuna
import pytest

from tune.plots import PLOTS, objective_label, plots


@pytest.fixture(scope="module")
def study():
    """Six finished trials over two parameters, each with intermediate values per epoch."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(6):
        trial = study.ask()
        lr, r = trial.suggest_float("lr", 1e-4, 1e-2, log=True), \
            trial.suggest_categorical("bottleneck", [16, 64])
        for epoch in (1, 2, 3):
            trial.report(0.5 + epoch * lr * 10 + r / 1000, epoch)
        study.tell(trial, 0.5 + 3 * lr * 10 + r / 1000)
    return study


def _texts(figure) -> list[str]:
    out = []
    for ax in figure.axes:
        out += [ax.get_xlabel(), ax.get_ylabel()] + [t.get_text() for t in ax.get_xticklabels()]
        legend = ax.get_legend()
        out += [t.get_text() for t in legend.get_texts()] if legend is not None else []
    return out


def test_each_figure_has_one_title_and_axes_named_after_the_objective(study):
    label = objective_label("best", "accuracy")
    assert label == "best valid accuracy (0 to 1)"
    figures, notes = plots(study, label)
    assert set(figures) == set(PLOTS) and notes == []
    for file, figure in figures.items():
        titles = [t for ax in figure.axes for t in (ax.get_title("left"), ax.get_title(),
                                                     ax.get_title("right")) if t]
        titles += [figure._suptitle.get_text()] if figure._suptitle is not None else []
        assert len(titles) == 1, (file, titles)
        texts = _texts(figure)
        assert not {"Objective Value", "Intermediate Value", "Step"} & set(texts), (file, texts)
        assert any(label in text for text in texts), (file, texts)
    assert figures["intermediate_values.png"].axes[0].get_xlabel() == "epoch"


def test_labels_name_the_unit_of_each_objective():
    assert objective_label("best", "mcc") == "best valid mcc (-1 to 1)"
    assert "nats" in objective_label("loglik", "accuracy")
