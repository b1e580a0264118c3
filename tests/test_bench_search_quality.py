"""bench/search_quality.py's bookkeeping on made-up trials: the incumbent after each report
in time order, the incumbent at a budget, and the paired summary. Pure: no Ray, no training."""

from __future__ import annotations

import importlib.util
import json
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


def made_up_rows(bench) -> list[dict]:
    rows = []
    for seed, (a, b, final, default, raw) in enumerate([(0.70, 0.68, 0.69, 0.70, 0.66),
                                                        (0.72, 0.70, 0.71, 0.69, 0.72),
                                                        (0.66, 0.65, 0.66, 0.66, 0.60)]):
        for budget in [str(f) for f in bench.BUDGETS] + ["returned"]:
            rows.append({"task": "sst2", "seed": seed, "budget": budget, "a_test": a,
                         "b_test": b, "b_final_test": final, "default_test": default,
                         "a_config": {"lr": seed}, "default_config": {"lr": 0},
                         **({"a_raw_test": raw} if budget == "returned" else {})})
    return rows


def test_paired_summary_per_budget() -> None:
    bench = load_bench()
    rows = made_up_rows(bench)
    summary = bench.paired(rows)
    assert set(summary) == {"1/4", "1/3", "1/2", "1", "returned"}
    third = summary["1/3"]
    assert third["a_minus_b"]["per_seed"] == pytest.approx([0.02, 0.02, 0.01])
    assert third["a_minus_b_final"]["mean"] == pytest.approx(0.02 / 3)
    returned = summary["returned"]
    assert returned["a_minus_default"]["per_seed"] == pytest.approx([0.0, 0.03, 0.0])
    assert returned["a_minus_a_raw"]["per_seed"] == pytest.approx([0.04, 0.0, 0.06])
    assert returned["a_raw_minus_default"]["per_seed"] == pytest.approx([-0.04, 0.03, -0.06])
    args = bench.parse_args(["--seeds", "0", "1", "2", "--no-write"])
    figures = {"rows": rows, "tasks": {"sst2": {"paired": summary,
                                                "settings": bench.settings_of(args)}}}
    text = bench.markdown(figures, Path("search_quality.png"), wall=60.0)
    assert "| 1/3 of (b)'s trial-epochs | 0.6933 | 0.6767 |" in text
    assert "(a) TPE + ASHA, 30 trials, grace 2, --split-draws 1" in text and "{" not in text
    assert "| (a) returned (re-ranked) − default | +0.0100 [" in text
    assert "The re-rank returned the default on 1 of 3 seeds." in text
    # Three seeds are fewer than the target's five: it is not called met or missed.
    assert "**not measurable with 3 seed(s) (needs at least 5)**" in text


def test_a_finished_seed_is_kept_and_other_settings_are_refused(tmp_path: Path) -> None:
    bench = load_bench()
    path = tmp_path / "search_quality.json"
    args = bench.parse_args(["--json", str(path), "--no-write"])
    assert bench.load_figures(args) == {"rows": [], "tasks": {}, "searches": {}}
    path.write_text(json.dumps({"rows": made_up_rows(bench), "searches": {},
                                "tasks": {"sst2": {"settings": bench.settings_of(args)}}}))
    assert len(bench.load_figures(args)["rows"]) == 15  # same flags: the rows are kept
    other = bench.parse_args(["--json", str(path), "--no-write", "--epochs", "30"])
    with pytest.raises(SystemExit, match="pass the same flags or another --json"):
        bench.load_figures(other)
    cola = bench.parse_args(["--json", str(path), "--no-write", "--task", "cola",
                             "--epochs", "30"])
    assert len(bench.load_figures(cola)["rows"]) == 15  # another task's rows stay beside
