"""bench/mi_estimators.py: its figures from made-up runs, and a --smoke run (demo task)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "mi_estimators.py"
sys.path.insert(0, str(SCRIPT.parent))
from _common import read_section  # noqa: E402 - the bench scripts' helpers


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_mi_estimators", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(test: float, shift: float, epochs: int = 3) -> dict:
    """A stored run whose shuffle gaps are `shift` nats and MI gradients half of L_pred's."""
    history = {"nce_rep": [1.0] * epochs, "nce_head": [2.0] * epochs,
               "nce_rep_shuffled": [1.0 + shift] * epochs,
               "nce_head_shuffled": [2.0 + shift] * epochs,
               "grad_pred": [0.8] * epochs, "grad_rep": [0.4] * epochs,
               "grad_head": [0.4] * epochs}
    return {"test_metric": test, "history": history}


def test_goal_follows_the_paired_intervals(tmp_path: Path) -> None:
    bench = load_bench()
    args = bench.parse_args(["--tasks", "sst2", "cola", "--seeds", "3", "--epochs", "3",
                             "--configs", "paper, bilinear", "in_batch, bilinear",
                             "--results", str(tmp_path / "runs.json")])
    store = bench.Store(args.results)
    baseline = {"sst2": [0.60, 0.62, 0.58], "cola": [0.10, 0.12, 0.08]}
    gains = {"paper, bilinear": {"sst2": [0.0, -0.01, 0.01], "cola": [0.0, 0.01, -0.01]},
             "in_batch, bilinear": {"sst2": [0.05, 0.04, 0.06], "cola": [0.0, 0.01, -0.01]}}
    for task, values in baseline.items():
        for seed, value in enumerate(values):
            store.data["runs"][bench.run_key(task, bench.BASELINE, seed, args)] = \
                {**_run(value, 0.0), "config": {"seed": seed}}
            for label, by_task in gains.items():
                shift = 0.5 if label.startswith("in_batch") else 0.0  # paper: no gap
                store.data["runs"][bench.run_key(task, label, seed, args)] = \
                    {**_run(value + by_task[task][seed], shift), "config": {"seed": seed}}
    table = bench.aggregate(store, args)

    assert table["in_batch, bilinear"]["sst2"]["vs_pred_only"]["verdict"] == "better"
    assert table["in_batch, bilinear"]["cola"]["vs_pred_only"]["verdict"] == \
        "no difference shown"
    assert table["in_batch, bilinear"]["goal"] and not table["paper, bilinear"]["goal"]
    assert table["in_batch, bilinear"]["signal"] and not table["paper, bilinear"]["signal"]
    diagnostics = table["in_batch, bilinear"]["sst2"]["diagnostics"]
    assert diagnostics["gap_rep"] == pytest.approx([0.5] * 3)
    assert diagnostics["ratio_head"] == pytest.approx([0.5] * 3)
    cost = {"task": "sst2", "epochs": 2, "steps": 8,
            **{name: {"with_s": 2.1, "without_s": 2.0, "ratio": 1.05} for name in ("cpu", "wall")}}
    text = bench.markdown(table, cost, args, "Run today.")
    assert "Configurations that meet the goal: in_batch, bilinear." in text
    assert "on every task): in_batch, bilinear." in text
    assert "| in_batch, bilinear | SST-2 | 0.500 / 0.500 |" in text


@pytest.mark.slow
def test_smoke_run_prints_every_figure(tmp_path: Path) -> None:
    before = read_section(load_bench().SECTION)
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--cache-dir",
                           str(tmp_path / "cache")], capture_output=True, text=True,
                          timeout=900, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tasks"] == ["demo"] and result["seeds"] == 2
    for kind in ("cpu", "wall"):
        assert result["diagnostics_cost"][kind]["ratio"] > 0
    table = result["table"]
    assert set(table) == {"pred_only", "paper, bilinear", "in_batch, bilinear, vib 0.1"}
    for label, row in table.items():
        demo = row["demo"]
        assert demo["n"] == 2 and 0 <= demo["mean"] <= 1
        assert set(demo["diagnostics"]) == {"gap_rep", "gap_head", "ratio_rep", "ratio_head"}
        assert all(len(series) == 2 for series in demo["diagnostics"].values())
        assert ("vs_pred_only" in demo) == (label != "pred_only")
    assert table["pred_only"]["demo"]["diagnostics"]["ratio_rep"] == [0.0, 0.0]  # β = 0
    assert table["paper, bilinear"]["demo"]["diagnostics"]["ratio_rep"][0] > 0
    assert "## InfoNCE estimators against pred_only" in done.stdout
    # --smoke writes nothing: neither BENCHMARKS.md nor bench/results/
    assert read_section(load_bench().SECTION) == before
    assert "/bench/results/" not in result["results"]
