"""The benchmark scripts in bench/ run: `--help` answers, and each `--smoke` (the generated demo
task, a tiny budget) finishes and ends its output with one JSON line of its headline figures,
leaving BENCHMARKS.md alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

HEADLINE_KEYS = {
    "methods_table.py": {"tasks", "seeds", "epochs", "mean", "std", "paired", "searches",
                         "wall_s"},
    "search_quality.py": {"paired", "rows", "json", "plot", "wall_s"},
    "search_scale.py": {"runs", "speedup", "memory_ratio", "load_before", "wall_s"},
    "selection_quality.py": {"tasks", "objectives", "seeds", "results", "wall_s"},
    "peers.py": {"step_ms", "ratio_peft_over_ours", "ratio_two_pass_over_ours", "test_metric",
                 "wall_s"},
}


@pytest.fixture(scope="module")
def bench_store(tmp_path_factory) -> Path:
    """One Arrow store for every smoke run (they all use the demo task)."""
    return tmp_path_factory.mktemp("bench-store")


@pytest.mark.parametrize("script", sorted(HEADLINE_KEYS))
def test_help_answers_without_running_anything(script: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "--smoke" in done.stdout and "--cache-dir" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("script", sorted(HEADLINE_KEYS))
def test_smoke_prints_its_headline_figures(script: str, bench_store: Path) -> None:
    from _common import read_section

    before = read_section(f"bench/{script}")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--smoke",
                           "--cache-dir", str(bench_store)], cwd=ROOT, capture_output=True,
                          text=True, timeout=580, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert HEADLINE_KEYS[script] <= figures.keys()
    assert read_section(f"bench/{script}") == before  # a smoke run writes nothing there
