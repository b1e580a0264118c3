"""tune/report.py on hand-made trials: the best configuration, the ASHA count, what the
files say. Pure: no Ray cluster, no training."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from infoprompt.errors import InfoPromptError
from tune.report import (
    TrialRow,
    final_comparison,
    final_stats,
    summarize,
    trial_rows,
    write_json,
    write_markdown,
)

SEARCH = {"objective": {"name": "best", "definition": "the best valid metric over the epochs "
                                                     "so far", "mode": "max"}}


def row(trial_id: str, best: float | None, *, status: str = "completed", epochs: int = 3,
        lr: float = 1e-3, objective: float | None = None) -> TrialRow:
    curve = [] if best is None else [best / 2, best][:epochs]
    return TrialRow(trial_id=trial_id, config={"lr": lr, "k_negatives": 32}, status=status,
                    epochs=epochs, objective=best if objective is None else objective,
                    last_valid_metric=curve[-1] if curve else None,
                    best_valid_metric=best, node_ip="10.0.0.1", curve=curve)


def summary_of(rows: list[TrialRow], final: dict | None = None):
    return summarize(task="demo", metric="accuracy", method="infoprompt", trials=rows,
                     final=final or {}, search=SEARCH)


def test_best_is_the_highest_objective():
    rows = [row("a", 0.6, lr=1e-3), row("b", 0.8, lr=2e-3), row("c", 0.7, lr=3e-3)]
    summary = summary_of(rows)
    assert summary.best_config == {"lr": 2e-3, "k_negatives": 32}
    assert summary.best_objective == summary.best_valid_metric == 0.8
    assert summary.trials == rows  # all trials kept, in order
    # The objective ranks, whatever the valid metric says (e.g. --objective loglik).
    by_loglik = [row("a", 0.6, objective=-0.2), row("b", 0.8, objective=-0.5)]
    assert summary_of(by_loglik).best_config["lr"] == 1e-3


def test_nan_none_and_errored_trials_are_never_best():
    rows = [row("none", None, status="error: infoprompt.train.Diverged: loss became nan",
                epochs=0, lr=1.0),
            row("nan", math.nan, lr=2.0),
            # Reported 0.99 before it diverged: Optuna was told FAIL, so it is not the best.
            row("diverged-late", 0.99, status="error: Diverged: loss became inf", epochs=2,
                lr=3.0),
            row("ok", 0.55, status="stopped early", epochs=1, lr=4e-3),
            row("inf", -math.inf, lr=5.0)]
    summary = summary_of(rows)
    assert summary.best_config["lr"] == 4e-3
    assert summary.best_objective == 0.55


def test_no_scored_trial_is_one_clear_error():
    rows = [row("x", None, status="error: Diverged: loss became nan", epochs=0),
            row("y", math.nan)]
    with pytest.raises(InfoPromptError, match="none of the 2 trials finished with a valid"):
        summary_of(rows)


def test_stopped_early_counts_asha_stops_only():
    rows = [row("a", 0.6), row("b", 0.5, status="stopped early", epochs=1),
            row("c", 0.5, status="stopped early", epochs=2),
            row("d", None, status="error: boom", epochs=0)]
    assert summary_of(rows).stopped_early == 2


def test_final_stats():
    stats = final_stats([0.7, 0.8, 0.9])
    assert stats["per_seed"] == [0.7, 0.8, 0.9]
    assert stats["mean"] == pytest.approx(0.8)
    assert stats["std"] == pytest.approx(0.1)  # sample std
    assert final_stats([0.5]) == {"per_seed": [0.5], "mean": 0.5, "std": 0.0, "diverged": 0}
    # A seed whose re-training diverged does not poison the others' mean.
    with_nan = final_stats([0.7, math.nan, 0.9])
    assert with_nan["diverged"] == 1 and with_nan["mean"] == pytest.approx(0.8)


def test_write_json(tmp_path: Path):
    final = {"returned": {"config": {"lr": 2e-3}, "seeds": [0, 1], **final_stats([0.7, 0.9])},
             "default": {"config": {"lr": 1e-3}, "seeds": [0, 1], **final_stats([0.6, 0.6])}}
    rows = [row("a", 0.6), row("b", 0.8, lr=2e-3), row("c", 0.4, status="stopped early",
                                                        epochs=1),
            row("d", None, status="error: boom", epochs=0)]
    write_json(summary_of(rows, final), tmp_path / "results.json")
    body = json.loads((tmp_path / "results.json").read_text())
    assert {"task", "metric", "method", "objective", "best_config", "best_objective",
            "best_valid_metric", "final", "search", "trials", "stopped_early"} <= set(body)
    assert body["objective"]["name"] == "best" and "definition" in body["objective"]
    assert body["best_config"] == {"lr": 2e-3, "k_negatives": 32}
    assert body["best_objective"] == body["best_valid_metric"] == 0.8
    assert body["stopped_early"] == 1
    assert body["final"]["returned"]["per_seed"] == [0.7, 0.9]
    assert body["final"]["returned"]["mean"] == pytest.approx(0.8)
    assert body["final"]["default"]["std"] == 0.0
    assert [t["trial_id"] for t in body["trials"]] == ["a", "b", "c", "d"]
    assert body["trials"][2] == {"trial_id": "c", "config": {"lr": 1e-3, "k_negatives": 32},
                                 "status": "stopped early", "epochs": 1, "objective": 0.4,
                                 "last_valid_metric": 0.2, "best_valid_metric": 0.4,
                                 "node_ip": "10.0.0.1", "curve": [0.2], "name": ""}
    assert body["trials"][3]["best_valid_metric"] is None


def paired_final(best: list[float], default: list[float]) -> dict:
    seeds = list(range(len(best)))
    final = {"returned": {"config": {"lr": 2e-3}, "seeds": seeds, **final_stats(best)},
             "default": {"config": {"lr": 1e-3}, "seeds": seeds, **final_stats(default)}}
    return {**final, **final_comparison(best, default)}


def test_write_markdown(tmp_path: Path):
    final = paired_final([0.70, 0.90, 0.80], [0.60, 0.85, 0.75])
    rows = [row("a", 0.6), row("d", None, status="error: boom", epochs=0),
            row("b", 0.8, lr=2e-3), row("c", 0.4, status="stopped early", epochs=1)]
    write_markdown(summary_of(rows, final), tmp_path / "results.md")
    text = (tmp_path / "results.md").read_text()
    assert ("Best objective in the search (best: the best valid metric over the epochs so far): **0.8000** "
            "with k_negatives=32, lr=0.002") in text
    # Seed by seed, then the paired difference with its CI, and words that follow the CI.
    assert "| 0 | 0.7000 | 0.6000 | +0.1000 |" in text
    assert "| 2 | 0.8000 | 0.7500 | +0.0500 |" in text
    paired = final["paired"]
    assert paired["ci"][0] < 0 < paired["ci"][1]  # [0.1, 0.05, 0.05]: too few seeds to say
    assert (f"Returned − default, paired over 3 seeds (the same splits): +0.0667, 95% CI "
            f"[{paired['ci'][0]:+.4f}, {paired['ci'][1]:+.4f}]: **no difference shown**") in text
    assert "better" not in text
    assert "## Trials (4, 1 stopped early by ASHA)" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "|---" not in line]
    trial_lines = table[table.index(next(t for t in table if t.startswith("| trial"))) + 1:]
    # Best first; a trial without a metric last, shown as "–".
    assert [line.split(" | ")[0] for line in trial_lines] == ["| b", "| a", "| c", "| d"]
    assert trial_lines[-1].endswith("| 0 | – | – | error: boom |")


def test_the_words_say_better_only_when_the_interval_excludes_zero(tmp_path: Path):
    final = paired_final([0.70, 0.72, 0.71, 0.73, 0.70], [0.60, 0.61, 0.63, 0.62, 0.60])
    write_markdown(summary_of([row("a", 0.6)], final), tmp_path / "results.md")
    assert final["paired"]["ci"][0] > 0
    assert "the returned config is **better** than the default" in \
        (tmp_path / "results.md").read_text()


def test_a_best_that_is_the_default_is_not_compared_with_itself(tmp_path: Path):
    final = paired_final([0.7, 0.8], [0.7, 0.8])
    final["default"]["config"] = final["returned"]["config"]
    write_markdown(summary_of([row("a", 0.6)], final), tmp_path / "results.md")
    text = (tmp_path / "results.md").read_text()
    assert "The returned configuration is the default one" in text
    assert "## Test accuracy (the task's test split), re-trained from scratch" in text  # demo
    assert "| mean ± std | 0.7500 ± 0.0707 |" in text


def test_a_glue_task_names_glue_dev_as_its_test_split(tmp_path: Path):
    summary = summary_of([row("a", 0.6)], paired_final([0.7, 0.8], [0.6, 0.7]))
    write_markdown(summary._replace(task="sst2"), tmp_path / "results.md")
    assert "## Test accuracy (GLUE dev), re-trained from scratch" in \
        (tmp_path / "results.md").read_text()


def test_semeval_results_say_what_its_metric_is(tmp_path: Path):
    summary = summary_of([row("a", 0.6)], paired_final([0.2, 0.3], [0.1, 0.2]))
    write_markdown(summary._replace(task="semeval", metric="semeval_f1"),
                   tmp_path / "results.md")
    text = (tmp_path / "results.md").read_text()
    assert "## Test semeval_f1 (the task's test split), re-trained from scratch" in text
    assert ("`semeval_f1`: macro-F1 over the 9 relations, direction counted, Other excluded "
            "(the official SemEval-2010 Task 8 score).") in text


def test_write_markdown_without_final(tmp_path: Path):
    write_markdown(summary_of([row("a", 0.6)]), tmp_path / "results.md")
    assert "Test accuracy" not in (tmp_path / "results.md").read_text()


def fake_result(path: str, config: dict, curve: list[float], *, error: Exception | None = None,
                trial_id: str | None = None):
    frame = pd.DataFrame({"valid_metric": curve, "epoch": range(1, len(curve) + 1)}) \
        if curve else None
    metrics = {"epoch": len(curve), "valid_metric": curve[-1], "trial_id": trial_id,
               "node_ip": "10.0.0.2", "objective": max(curve)} if curve else {}
    return SimpleNamespace(path=path, config=config, metrics=metrics, metrics_dataframe=frame,
                           error=error)


def test_trial_rows_status_epochs_and_ids():
    grid = [fake_result("/x/trial_000_aaa", {"lr": 1e-3}, [0.5, 0.6, 0.7], trial_id="aaa"),
            fake_result("/x/trial_001_bbb", {"lr": 2e-3}, [0.5], trial_id="bbb"),
            fake_result("/x/trial_002_ccc", {"lr": 1e9}, [],
                        error=RuntimeError("Traceback ...\ninfoprompt.train.Diverged: loss "
                                           "became nan in epoch 1")),
            fake_result("/x/trial_003_ddd", {"lr": 3e-3}, [0.5, 0.9],
                        error=RuntimeError("node lost"), trial_id="ddd")]
    rows = trial_rows(grid, max_epochs=3)
    # Ray's id (from the folder when the trial never reported) and the trial's one name.
    assert [r.trial_id for r in rows] == ["aaa", "bbb", "ccc", "ddd"]
    assert [r.name for r in rows] == ["trial_000_aaa", "trial_001_bbb", "trial_002_ccc",
                                      "trial_003_ddd"]
    assert [r.status for r in rows] == [
        "completed", "stopped early",
        "error: infoprompt.train.Diverged: loss became nan in epoch 1", "error: node lost"]
    assert [r.epochs for r in rows] == [3, 1, 0, 2]
    assert rows[0].last_valid_metric == 0.7 and rows[0].best_valid_metric == 0.7
    assert rows[2].best_valid_metric is None and rows[2].curve == []
    assert rows[3].best_valid_metric == 0.9
    summary = summary_of(rows)
    assert summary.best_config == {"lr": 1e-3}  # not ddd's 0.9: that trial errored
    assert summary.stopped_early == 1


def test_trial_rows_tell_unfinished_from_stopped_by_asha():
    """Tune's own status (the grid's experiment analysis) decides: an interrupted search
    leaves RUNNING / PAUSED / PENDING trials, which a Result alone cannot tell from ASHA's
    stops (no error, fewer epochs than max_t)."""

    class Grid(list):
        def __init__(self, results, statuses):
            super().__init__(results)
            self._experiment_analysis = SimpleNamespace(
                trials=[SimpleNamespace(status=s) for s in statuses])

    grid = Grid([fake_result("/x/trial_a", {"lr": 1e-3}, [0.5, 0.6, 0.7], trial_id="a"),
                 fake_result("/x/trial_b", {"lr": 2e-3}, [0.5], trial_id="b"),
                 fake_result("/x/trial_c", {"lr": 3e-3}, [0.5], trial_id="c"),
                 fake_result("/x/trial_d", {"lr": 4e-3}, [], trial_id="d"),
                 fake_result("/x/trial_e", {"lr": 5e-3}, [0.4], trial_id="e")],
                ["TERMINATED", "TERMINATED", "PAUSED", "PENDING", "ERROR"])
    rows = trial_rows(grid, max_epochs=3)
    assert [r.status for r in rows] == [
        "completed", "stopped early", "unfinished", "unfinished",
        "error: (no message saved; see the trial's error.txt)"]
    assert summary_of(rows).stopped_early == 1
