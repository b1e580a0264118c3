"""Search scaling: wall time and peak memory of one search at 1 vs 2 concurrent trials, and
Ray's overhead per trial.

Runs `python tune/search.py` (64-shot SST-2, MiniLM, `--num-samples` trials of `--epochs`
epochs, ASHA's grace period = --epochs so no trial is stopped and both runs do the same work,
--final-seeds 0) once per `--concurrency` value, as a child process. Every 0.5 s it sums the
RSS of that process and all its descendants (Ray's GCS, raylet, and every worker; shared
pages count once per process, so the sum overstates what the machine loses).
Per trial, from its progress.csv:
- start to first step: time_total_s at the first report minus that epoch's epoch_seconds
  (Ray hands the trial its data, the trial loads the encoder and builds its state);
- between epochs: wall time between consecutive reports (time_total_s) minus the trial's
  own epoch_seconds (Ray's report, the per-epoch checkpoint, and the result's way to the
  driver);
- scheduling: the search's wall time minus Ray's start-up, the trials' own time
  (sum of time_total_s / concurrency) and the final report.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    ROOT,
    add_common_arguments,
    bench_config,
    emit,
    provenance,
    trial_progress,
    write_section,
)

SECTION = "bench/search_scale.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--shots", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2],
                        help="--max-concurrent values to compare (default: 1 2)")
    parser.add_argument("--interval", type=float, default=0.5, help="RSS sampling period (s)")
    parser.add_argument("--storage-path", default=None,
                        help="Ray results folder (default: a temporary one)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.task, args.shots, args.num_samples, args.epochs = "demo", 16, 2, 1
        args.no_write = True
    return args


class MemorySampler(threading.Thread):
    """Peak of the summed RSS of a process tree, sampled every `interval` seconds."""

    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.stop = threading.Event()
        self.peak_total = 0
        self.peak_driver = 0
        self.peak_processes = 0
        self.samples = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                processes = [self.root] + self.root.children(recursive=True)
            except psutil.Error:
                break
            total = driver = 0
            for process in processes:
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                if process.pid == self.root.pid:
                    driver = rss
            self.peak_total = max(self.peak_total, total)
            self.peak_driver = max(self.peak_driver, driver)
            self.peak_processes = max(self.peak_processes, len(processes))
            self.samples += 1
            self.stop.wait(self.interval)


def trial_timings(experiment: Path) -> list[dict[str, Any]]:
    trials = []
    for folder in sorted(experiment.glob("trial_*")):
        found = trial_progress(folder)
        if found is None:
            continue
        frame, start = found
        frame = frame.sort_values("epoch")
        total = frame["time_total_s"].to_numpy()
        epoch_seconds = frame["epoch_seconds"].to_numpy()
        trials.append({
            "trial": folder.name, "start": start, "end": start + float(total[-1]),
            "time_total_s": float(total[-1]), "epochs": len(frame),
            "setup_s": float(total[0] - epoch_seconds[0]),
            "between_epochs_s": [float(total[i] - total[i - 1] - epoch_seconds[i])
                                 for i in range(1, len(frame))],
            "epoch_seconds": [float(x) for x in epoch_seconds]})
    return trials


def run_search(args: argparse.Namespace, concurrency: int, storage: str, *,
               cpus_per_trial: float = 1, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """One search as a child process; `extra`: more flags (bench/gpu_check.py: GPUs)."""
    name = f"bench-scale-c{concurrency}-{time.strftime('%Y%m%d-%H%M%S')}"
    command = [sys.executable, str(ROOT / "tune" / "search.py"), "--task", args.task,
               "--shots", str(args.shots), "--model", getattr(args, "model", "minilm"),
               "--cache-dir", args.cache_dir,
               "--num-samples", str(args.num_samples), "--epochs", str(args.epochs),
               "--grace-period", str(args.epochs), "--final-seeds", "0", "--rerank-top", "0",
               "--seed", "0",
               "--max-concurrent", str(concurrency), "--cpus-per-trial", f"{cpus_per_trial:g}",
               "--storage-path", storage, "--name", name, *extra]
    if args.task != "demo" and args.data_dir:
        command += ["--data-dir", args.data_dir]
    print("running: " + " ".join(command), flush=True)
    log = Path(storage) / f"{name}.log"
    started = time.time()
    with open(log, "w") as handle:
        child = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
        sampler = MemorySampler(child.pid, args.interval)
        sampler.start()
        code = child.wait()
        ended = time.time()
        sampler.stop.set()
        sampler.join()
    if code != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"search at --max-concurrent {concurrency} failed ({code}):\n{tail}")
    trials = trial_timings(Path(storage) / name)
    wall = ended - started
    first_start = min(t["start"] for t in trials)
    last_end = max(t["end"] for t in trials)
    busy = sum(t["time_total_s"] for t in trials)
    between = [x for t in trials for x in t["between_epochs_s"]]
    ray_ready = _ray_ready(log.read_text())
    return {
        "concurrency": concurrency, "wall_s": wall, "trials": len(trials),
        "trial_epochs": sum(t["epochs"] for t in trials),
        "peak_rss_mib": sampler.peak_total / 2**20,
        "peak_driver_rss_mib": sampler.peak_driver / 2**20,
        "peak_processes": sampler.peak_processes, "samples": sampler.samples,
        # launch -> "Started a local Ray instance": imports, store read, ray.init
        "ray_init_s": None if ray_ready is None else ray_ready - started,
        # Ray ready -> the first trial function runs: searcher, worker process start, imports
        "first_trial_wait_s": None if ray_ready is None else first_start - ray_ready,
        "startup_s": first_start - started,
        "trials_span_s": last_end - first_start,
        "teardown_s": ended - last_end,  # report, plot, ray.shutdown
        # slot time outside any trial function, per trial: actor reuse, searcher, placement
        "idle_per_trial_s": ((last_end - first_start) * concurrency - busy) / len(trials),
        "setup_median_s": statistics.median(t["setup_s"] for t in trials),
        "setup_max_s": max(t["setup_s"] for t in trials),
        "between_epochs_median_s": statistics.median(between) if between else None,
        "epoch_seconds_median": statistics.median(x for t in trials for x in t["epoch_seconds"]),
        "log": str(log),
    }


def _ray_ready(text: str) -> float | None:
    """When the search's log says Ray started (local time in the log's own format)."""
    found = re.search(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}).*Started a local Ray instance",
                      text, re.MULTILINE)
    if not found:
        return None
    return datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def markdown(runs: list[dict[str, Any]], args: argparse.Namespace, wall: float,
             load_before: tuple[float, float, float]) -> str:
    def cell(value: float | None, unit: str = "s") -> str:
        return "–" if value is None else f"{value:.2f}{unit}"

    rows = ["| --max-concurrent | wall | peak RSS (sum) | driver RSS | processes | trial-epochs "
            "| launch → Ray up | Ray up → first trial runs | in trial: start → first step "
            "(median / max) | between epochs (median) | idle slot time per trial | epoch "
            "(median) | last trial → exit |", "|---" * 13 + "|"]
    for r in runs:
        rows.append(
            f"| {r['concurrency']} | {r['wall_s']:.1f}s | {r['peak_rss_mib']:.0f} MiB | "
            f"{r['peak_driver_rss_mib']:.0f} MiB | {r['peak_processes']} | {r['trial_epochs']} | "
            f"{cell(r['ray_init_s'])} | {cell(r['first_trial_wait_s'])} | "
            f"{r['setup_median_s']:.2f}s / {r['setup_max_s']:.2f}s | "
            f"{cell(r['between_epochs_median_s'])} | {r['idle_per_trial_s']:.2f}s | "
            f"{r['epoch_seconds_median']:.2f}s | {r['teardown_s']:.1f}s |")
    lines = ["## Search scaling and Ray overhead (`bench/search_scale.py`)", "",
             f"`tune/search.py`, {args.task.upper()} {args.shots}-shot, MiniLM, "
             f"{args.num_samples} trials × {args.epochs} epochs (no early stopping, "
             "--final-seeds 0), 1 CPU per trial. Peak RSS: the search process and all its "
             f"descendants (Ray's processes and workers), summed, sampled every "
             f"{args.interval:g} s.", "", *rows, ""]
    if len(runs) >= 2:
        one, two = runs[0], runs[-1]
        lines += [f"Speed-up {one['concurrency']} → {two['concurrency']} concurrent trials: "
                  f"{one['wall_s'] / two['wall_s']:.2f}× in wall time; "
                  f"{one['trials_span_s'] / two['trials_span_s']:.2f}× while trials run "
                  "(first trial start → last trial end; the ideal on 2 cores is 2×, less the "
                  "per-epoch slowdown of sharing memory bandwidth); peak memory "
                  f"{two['peak_rss_mib'] / one['peak_rss_mib']:.2f}×. The rest of the wall "
                  "time (start-up and tear-down, ~25 s) does not shrink with concurrency.", ""]
    lines += ["Columns: launch → Ray up: from starting the command to its log's \"Started a "
              "local Ray instance\" (imports, reading the store, ray.init). Ray up → first trial "
              "runs: searcher, placement, and starting the worker process (which imports torch "
              "and transformers). In trial, start → first step: the trial's time_total_s at "
              "its first report minus that epoch's own epoch_seconds (data from the object "
              "store, encoder load, model and optimizer). Between epochs: wall time between "
              "consecutive reports minus the trial's epoch_seconds (tune.report and the "
              "per-epoch checkpoint). Idle slot time per trial: (span of all trials × "
              "concurrency − Σ trial time_total_s) / trials — the time a trial slot spends "
              "outside any trial function (actor reset and reuse, the searcher, placement). "
              "A trial's absolute start is placed from progress.csv (timestamp − "
              "time_total_s, whole seconds: ±1 s).", "",
              f"Load average before the run: {load_before[0]:.2f} (1 min).", "",
              provenance(wall)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()
    storage = args.storage_path or tempfile.mkdtemp(prefix="bench-scale-ray-")
    Path(storage).mkdir(parents=True, exist_ok=True)
    # Build the store first, so neither timed search pays for it.
    from infoprompt.store import load_splits

    load_splits(bench_config(args, task=args.task, shots=args.shots, seed=0), with_test=False)
    runs = [run_search(args, c, storage) for c in args.concurrency]
    wall = time.perf_counter() - started
    text = markdown(runs, args, wall, load_before)
    print("\n" + text + "\n", flush=True)
    if not args.no_write:
        write_section(SECTION, text)
    figures = {"runs": {str(r["concurrency"]): {k: v for k, v in r.items() if k != "log"}
                        for r in runs},
               "speedup": runs[0]["wall_s"] / runs[-1]["wall_s"],
               "memory_ratio": runs[-1]["peak_rss_mib"] / runs[0]["peak_rss_mib"],
               "load_before": load_before[0], "wall_s": round(wall, 1)}
    emit(figures)
    return figures


if __name__ == "__main__":
    main()
