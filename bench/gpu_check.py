"""The parts of `bash bench/gpu_check.sh`, one subcommand each, and the report that joins them.

    python bench/gpu_check.py setup --out F ...      # carried wheels installed, encoders built
    python bench/gpu_check.py tests --out F          # tests/test_cuda.py, `pytest -m cuda`
    python bench/gpu_check.py step-time --out F ...  # bench/step_time.py's train-step part
    python bench/gpu_check.py search --out F ...     # one tune/search.py run, its throughput
    python bench/gpu_check.py report --work DIR --out F   # every part's figures, one JSON

The shell script owns the budgets (steps, trials, epochs) and a `timeout` around each part;
each part writes its figures to its --out file as it measures them (a part stopped at its
time limit keeps what it had); `report` adds what the script recorded (exit status, seconds,
the part's command, a skip's reason) and marks a part that wrote nothing. Only the search
parts import Ray: everything else needs what a bare GPU machine has.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from _encoders import SHAPES  # noqa: E402 - bench/ helpers (stdlib only at import)

PARTS = ("setup", "cuda_tests", "step_time_minilm", "step_time_large", "search_shared",
         "search_whole")


def log(message: str) -> None:
    print(f"[gpu_check] {message}", file=sys.stderr, flush=True)


def write(path: str, figures: dict[str, Any]) -> None:
    """Whole or not at all: a part killed while writing leaves its previous figures."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(figures, indent=2, default=float) + "\n")
    os.replace(partial, path)


# --- setup: the carried wheels, the encoders ---------------------------------------------


def setup(args: argparse.Namespace) -> int:
    """Install the carried wheels (if any) into --site and build the encoders every part
    shares; Ray itself is checked by the shell script, with --site on PYTHONPATH."""
    import gpu_wheels
    from _encoders import build_encoder

    figures: dict[str, Any] = {"wheels": None, "encoders": {}}
    code = 0
    if args.wheels:
        report = Path(args.work) / "wheels.json"
        report.parent.mkdir(parents=True, exist_ok=True)
        code = gpu_wheels.main(["install", args.wheels, args.site, "--report", str(report)])
        figures["wheels"] = json.loads(report.read_text())
        write(args.out, figures)
    for shape in args.shapes:
        figures["encoders"][shape] = build_encoder(shape, Path(args.encoders) / shape)
        log(f"{shape} encoder: {figures['encoders'][shape]['parameters'] / 1e6:.0f}M "
            f"parameters, {figures['encoders'][shape]['build_s']:.0f}s")
        write(args.out, figures)
    return code


# --- (a) the CUDA tests ---------------------------------------------------------------------


def junit_summary(path: Path) -> dict[str, Any]:
    """Counts and every case's outcome (with a skip's reason) from pytest's JUnit XML."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", None
        for child in case:
            if child.tag in ("skipped", "failure", "error"):
                outcome = {"skipped": "skipped", "failure": "failed", "error": "error"}[child.tag]
                message = (child.get("message") or "").strip()[:300]
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}",
                      "outcome": outcome, "message": message,
                      "seconds": float(case.get("time", 0))})
    count = {o: sum(c["outcome"] == o for c in cases) for o in ("passed", "skipped", "failed",
                                                                 "error")}
    return {"tests": len(cases), **count,
            "skip_reasons": sorted({c["message"] for c in cases if c["outcome"] == "skipped"}),
            "cases": cases}


def tests(args: argparse.Namespace) -> int:
    import torch

    junit = Path(args.work) / "junit.xml"
    junit.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider",
               f"--timeout={args.timeout}", f"--junitxml={junit}", *args.paths]
    log(" ".join(command))
    code = subprocess.run(command, cwd=ROOT).returncode
    figures = {"command": " ".join(command[1:]), "pytest_exit": code,
               "cuda_available": torch.cuda.is_available()}
    if junit.exists():
        figures.update(junit_summary(junit))
    write(args.out, figures)
    # 0: all passed or skipped; 5: nothing collected (the marker selects no test): a failure.
    return code


# --- (b) step time --------------------------------------------------------------------------


def step_time(args: argparse.Namespace) -> int:
    import step_time as bench
    import torch
    from _encoders import build_encoder

    figures: dict[str, Any] = {"budget": {"steps": args.steps, "warmup": args.warmup,
                                          "task": args.task, "batch": "8 x 64 tokens"},
                               "model": args.model, "device": args.device, "encoder": None}
    if args.shape:  # built in this part: its build time is part of what the part costs
        figures["encoder"] = build_encoder(args.shape, Path(args.work) / "encoder")
        figures["model"] = figures["encoder"]["folder"]
    else:
        config = Path(args.model) / "config.json"
        if config.exists():  # its shape: the keys of a SHAPES entry
            shape = json.loads(config.read_text())
            figures["encoder"] = {key: shape.get(key) for key in SHAPES["minilm"]}
    write(args.out, figures)

    def progress(rows: list[dict]) -> None:
        figures["step_time"] = rows
        if torch.device(args.device).type == "cuda":
            figures["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        write(args.out, figures)

    argv = ["--device", args.device, "--task", args.task, "--parts", "steps",
            "--model", figures["model"], "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--threads", str(args.threads)]
    result = bench.main(argv, progress=progress)
    figures.update(device=result["device"], step_time=result["step_time"],
                   bf16_over_fp32=result["bf16_over_fp32"], targets=result["targets"],
                   environment=result["environment"], complete=True)
    progress(result["step_time"])
    return 0


# --- (c) search throughput ------------------------------------------------------------------


def search(args: argparse.Namespace) -> int:
    from _common import bench_config
    from search_scale import run_search

    from infoprompt.store import load_splits

    work = Path(args.work)
    storage = work / "ray"
    storage.mkdir(parents=True, exist_ok=True)
    spec = argparse.Namespace(task="demo", shots=args.shots, num_samples=args.num_samples,
                              epochs=args.epochs, cache_dir=args.cache_dir, data_dir=None,
                              interval=0.5, model=args.model)
    budget = {"task": "demo", "shots": args.shots, "model": args.model,
              "trials": args.num_samples, "epochs": args.epochs, "grace_period": args.epochs,
              "final_seeds": 0, "gpus_per_trial": args.gpus_per_trial,
              "cpus_per_trial": args.cpus_per_trial, "max_concurrent": args.max_concurrent}
    write(args.out, {"budget": budget})
    # The store first (the other search part finds it there), so the timed search reads it.
    load_splits(bench_config(spec, task="demo", shots=args.shots, seed=0, device="auto"),
                with_test=False, log=lambda message: None)
    extra = ("--gpus-per-trial", f"{args.gpus_per_trial:g}") if args.gpus_per_trial else ()
    try:
        run = run_search(spec, args.max_concurrent, str(storage),
                         cpus_per_trial=args.cpus_per_trial, extra=extra)
    finally:  # the search's own log, into this part's (success or not)
        for path in sorted(storage.glob("*.log")):
            print(f"--- {path.name}\n{path.read_text()}", flush=True)
    run.pop("log", None)
    epochs = run["trial_epochs"]
    figures = {
        "budget": budget,
        "trial_epochs": epochs,
        # Over the whole command (Ray's start and stop included), and while trials run.
        "throughput_wall": epochs / run["wall_s"],
        "throughput_span": epochs / run["trials_span_s"],
        "run": run,
    }
    write(args.out, figures)
    return 0


# --- the report -----------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import importlib.metadata
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    packages = {}
    for name in ("torch", "transformers", "ray", "optuna", "pytest-timeout"):
        spec = importlib.util.find_spec(name.replace("-", "_"))
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = None
        packages[name] = {"version": version, "from": spec and spec.origin}
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda else [], "cores": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(), "packages": packages,
            "offline": {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE",
                                                        "RAY_USAGE_STATS_ENABLED")}}


def report(args: argparse.Namespace) -> int:
    work, logs = Path(args.work), Path(args.logs)
    recorded = {}
    for line in (work / "status.tsv").read_text().splitlines():
        name, code, seconds, limit, command = line.split("\t")
        if code == "skip":  # the script's reason in place of a command
            recorded[name] = {"status": "skipped", "reason": command, "timeout_s": 0}
            continue
        recorded[name] = {"exit": int(code), "seconds": int(seconds), "timeout_s": int(limit),
                          "command": command}
    parts: dict[str, Any] = {}
    for name in PARTS:
        entry = recorded.get(name)
        if entry is None or entry.get("status") == "skipped":
            parts[name] = entry or {"status": "not run"}
            continue
        path = work / f"{name}.json"
        status = ("ok" if entry["exit"] == 0 and path.exists() else
                  "timed out" if entry["exit"] in (124, 137) else "failed")
        parts[name] = {"status": status, **entry, "log": str(logs / f"{name}.log")}
        if path.exists():  # a part stopped at its limit keeps the figures it had written
            parts[name]["result"] = json.loads(path.read_text())
        if status != "ok" and (logs / f"{name}.log").exists():
            parts[name]["log_tail"] = (logs / f"{name}.log").read_text()[-3000:]
    throughput = None
    shared, whole = (parts[n].get("result") or {} for n in ("search_shared", "search_whole"))
    if "trial_epochs" in shared and "trial_epochs" in whole:
        throughput = {
            "shared": {k: shared[k] for k in ("throughput_wall", "throughput_span")},
            "whole": {k: whole[k] for k in ("throughput_wall", "throughput_span")},
            "ratio_wall": shared["throughput_wall"] / whole["throughput_wall"],
            "ratio_span": shared["throughput_span"] / whole["throughput_span"],
            "unit": "trial-epochs per second",
            "shared_is": shared["budget"], "whole_is": whole["budget"]}
    figures = {
        "check": "bash bench/gpu_check.sh" + (" --dry-run" if args.dry_run else ""),
        "dry_run": args.dry_run,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": args.final,  # False: written between parts, the check goes on
        "wall_s": args.wall_s,
        "budget_s": sum(e["timeout_s"] for e in recorded.values()),
        "environment": environment() if args.final else None,  # torch's import: once
        "all_ok": all(p["status"] in ("ok", "skipped") for p in parts.values()),
        "skipped": {n: p["reason"] for n, p in parts.items() if p["status"] == "skipped"},
        "parts": parts,
        "search_throughput": throughput,
    }
    write(args.out, figures)
    if not args.final:
        return 0
    for name, part in parts.items():
        log(f"{name}: {part['status']}" + (f" ({part['seconds']}s of {part['timeout_s']}s)"
                                           if "seconds" in part else ""))
    if throughput:
        log(f"search throughput, shared / whole: {throughput['ratio_span']:.2f}x while trials "
            f"run, {throughput['ratio_wall']:.2f}x over the whole command")
    return 0 if figures["all_ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("setup", "tests", "step-time", "search", "report"):
        sub = commands.add_parser(name)
        sub.add_argument("--out", required=True, help="JSON file to write")
        sub.add_argument("--work", required=True, help="scratch folder of this part")
        if name == "setup":
            sub.add_argument("--wheels", default=None, help="carried wheels (gpu_wheels.py)")
            sub.add_argument("--site", required=True, help="where they are installed")
            sub.add_argument("--encoders", required=True, help="folder of the built encoders")
            sub.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["minilm"])
        elif name == "tests":
            sub.add_argument("--timeout", type=int, required=True, help="seconds per test")
            sub.add_argument("paths", nargs="*", default=["tests/test_cuda.py"])
        elif name == "step-time":
            sub.add_argument("--device", default="cuda")
            sub.add_argument("--task", default="demo")
            sub.add_argument("--model", default="minilm")
            sub.add_argument("--shape", choices=sorted(SHAPES), default=None,
                             help="time a random-init encoder of this shape instead of --model")
            sub.add_argument("--steps", type=int, required=True)
            sub.add_argument("--warmup", type=int, required=True)
            sub.add_argument("--threads", type=int, default=2)
        elif name == "search":
            sub.add_argument("--gpus-per-trial", type=float, default=0.0)
            sub.add_argument("--cpus-per-trial", type=float, default=1.0)
            sub.add_argument("--max-concurrent", type=int, required=True)
            sub.add_argument("--num-samples", type=int, required=True)
            sub.add_argument("--epochs", type=int, required=True)
            sub.add_argument("--shots", type=int, required=True)
            sub.add_argument("--cache-dir", required=True)
            sub.add_argument("--model", required=True, help="encoder folder (or name)")
        else:
            sub.add_argument("--logs", required=True, help="folder of the parts' logs")
            sub.add_argument("--dry-run", action="store_true")
            sub.add_argument("--final", action="store_true", help="the check has ended")
            sub.add_argument("--wall-s", type=float, required=True)
    args = parser.parse_args(argv)
    run = {"setup": setup, "tests": tests, "step-time": step_time, "search": search,
           "report": report}
    return run[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
