"""bench/gpu_check.sh: its report, and (slow) its dry run on CPU, which CI runs so that the
GPU check cannot rot while no GPU runs it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
PARTS = ("cuda_tests", "step_time_minilm", "step_time_large", "search_shared", "search_whole")


def load_check():
    spec = importlib.util.spec_from_file_location("bench_gpu_check", ROOT / "bench" /
                                                  "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_names_every_part_and_unknown_options_are_refused():
    done = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True,
                          timeout=60, check=True)
    for name in (*PARTS, "--dry-run", "--out"):
        assert name in done.stdout
    refused = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2 and "unknown option --bogus" in refused.stderr


def test_report_marks_a_part_that_timed_out_or_wrote_nothing(tmp_path):
    check = load_check()
    rows = [("cuda_tests", 0, 5, 90, "tests tests"), ("step_time_minilm", 124, 60, 60, "x"),
            ("step_time_large", 1, 3, 120, "y"), ("search_shared", 0, 40, 90, "z")]
    (tmp_path / "status.tsv").write_text("".join("\t".join(map(str, r)) + "\n" for r in rows))
    (tmp_path / "cuda_tests.json").write_text(json.dumps({"tests": 4, "skipped": 4}))
    (tmp_path / "step_time_large.log").write_text("Traceback: boom\n")
    out = tmp_path / "report.json"
    code = check.main(["report", "--work", str(tmp_path), "--out", str(out), "--wall-s", "108"])
    report = json.loads(out.read_text())
    status = {name: part["status"] for name, part in report["parts"].items()}
    assert status == {"cuda_tests": "ok", "step_time_minilm": "timed out",
                      "step_time_large": "failed", "search_shared": "failed",  # no JSON
                      "search_whole": "not run"}
    assert code == 1 and not report["all_ok"] and report["search_throughput"] is None
    assert report["budget_s"] == 90 + 60 + 120 + 90
    assert "boom" in report["parts"]["step_time_large"]["log_tail"]
    assert report["parts"]["cuda_tests"]["result"] == {"tests": 4, "skipped": 4}


@pytest.mark.slow
def test_dry_run_runs_every_part_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    # (TMPDIR stays: Ray puts its sockets there, and a pytest tmp_path is too long for them.)
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"figures in {out}" in done.stdout
    report = json.loads(out.read_text())
    assert set(report) == {"check", "dry_run", "date", "wall_s", "budget_s", "environment",
                           "all_ok", "parts", "search_throughput"}
    assert report["dry_run"] and report["all_ok"] and set(report["parts"]) == set(PARTS)
    for name, part in report["parts"].items():
        assert part["status"] == "ok" and part["seconds"] <= part["timeout_s"], name
        assert part["result"], name

    tests = report["parts"]["cuda_tests"]["result"]
    assert tests["tests"] >= 4 and tests["failed"] == tests["error"] == 0
    if not tests["cuda_available"]:  # skipped, each with its reason
        assert tests["skipped"] == tests["tests"]
        assert all("needs a CUDA GPU" in reason for reason in tests["skip_reasons"])
    for name in ("step_time_minilm", "step_time_large"):
        result = report["parts"][name]["result"]
        assert [row["dtype"] for row in result["step_time"]] == ["fp32", "bf16"]
        assert all(row[k] > 0 for row in result["step_time"]
                   for k in ("floor_ms", "step_ms", "naive_ms"))
    assert report["parts"]["step_time_large"]["result"]["encoder"]["shape"] == "small"
    throughput = report["search_throughput"]
    assert throughput["shared_is"]["max_concurrent"] == 2
    assert throughput["whole_is"]["max_concurrent"] == 1
    for side in ("shared", "whole"):
        assert throughput[side]["throughput_wall"] > 0 and throughput[side]["throughput_span"] > 0
    assert throughput["ratio_span"] > 0 and throughput["ratio_wall"] > 0
