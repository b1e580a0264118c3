"""bench/search_quality.py's bookkeeping on made-up trials: the incumbent after each report
in time order, the incumbent at a budget, and the paired summary. Pure: no Ray, no training."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "search_quality.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_search_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_trial(root: Path, trial_id: str, start: float, objectives: list[float]) -> None:
    folder = root / f"trial_{trial_id}"
    folder.mkdir()
    times = [10.0 * (i + 1) for i in range(len(objectives))]
    pd.DataFrame({"epoch": range(1, len(objectives) + 1), "objective": objectives,
                  "time_total_s": times, "timestamp": [start + t for t in times]}
                 ).to_csv(folder / "progress.csv", index=False)


def test_incumbents_follow_the_reports_in_time_order(tmp_path: Path) -> None:
    bench = load_bench()
    write_trial(tmp_path, "a", 0, [0.5, 0.6])  # reports at 10, 20
    write_trial(tmp_path, "b", 5, [0.7, 0.55])  # reports at 15, 25
    write_trial(tmp_path, "c", 100, [0.65])  # at 110: not better
    trials = [{"trial_id": t, "config": {"lr": lr}} for t, lr in (("a", 1), ("b", 2), ("c", 3))]
    points = bench.incumbents(tmp_path, trials, draws=2)  # each report: 2 trial-epochs
    assert points == [(2, {"lr": 1}), (4, {"lr": 2}), (6, {"lr": 2}), (8, {"lr": 2}),
                      (10, {"lr": 2})]
    assert bench.at_budget(points, 3) == {"lr": 1}
    assert bench.at_budget(points, 1) == {"lr": 1}  # nothing yet: the first incumbent
    assert bench.at_budget(points, 100) == {"lr": 2}


def test_paired_summary_per_budget() -> None:
    bench = load_bench()
    rows = []
    for seed, (a, b, final) in enumerate([(0.70, 0.68, 0.69), (0.72, 0.70, 0.71),
                                          (0.66, 0.65, 0.66)]):
        for budget in [str(f) for f in bench.BUDGETS] + ["returned"]:
            rows.append({"seed": seed, "budget": budget, "a_test": a, "b_test": b,
                         "b_final_test": final})
    summary = bench.paired(rows)
    assert set(summary) == {"1/4", "1/3", "1/2", "1", "returned"}
    third = summary["1/3"]
    assert third["a_minus_b"]["per_seed"] == pytest.approx([0.02, 0.02, 0.01])
    assert third["a_minus_b_final"]["mean"] == pytest.approx(0.02 / 3)
    args = bench.parse_args(["--seeds", "0", "1", "2", "--no-write"])
    text = bench.markdown(rows, summary, args, wall=60.0)
    assert "| 1/3 of (b)'s trial-epochs | 0.6933 | 0.6767 |" in text
    assert "(a) TPE + ASHA, 40 trials, grace 2, --split-draws 1" in text and "{" not in text
    # Three seeds are fewer than the target's five: it is not called met or missed.
    assert "**not measurable with 3 seed(s) (needs at least 5)**" in text
