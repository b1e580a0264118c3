"""Independent training runs for the benchmarks: a worker pool (spawned processes, one torch
thread each) and a results file written after every finished run, so that a re-run skips
what is already there and an interrupted benchmark loses at most the runs in flight."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from pathlib import Path
from typing import Any

__all__ = ["Store", "fit_job", "open_store", "run_fits"]


class Store:
    """The results JSON: written whole (atomically) after every finished run."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}
        self.data.setdefault("runs", {})
        self.data.setdefault("searches", {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=float))
        os.replace(tmp, self.path)


def open_store(path: Path, configs: Iterable[Any]) -> Store:
    """The results file (saying how many runs it holds already), after building the Arrow
    store of every config here, once, so that the pool's workers only read them."""
    from infoprompt.store import load_splits

    store = Store(path)
    print(f"results: {path} ({len(store.data['runs'])} runs already there)", flush=True)
    for cfg in configs:
        load_splits(cfg)
    return store


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def fit_job(config: dict[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """One run in a worker process: train, keep the best-valid epoch, score test; `keep`:
    the per-epoch values kept from the run's history (NaN where an epoch has none)."""
    from infoprompt.config import InfoPromptConfig
    from infoprompt.store import load_splits
    from infoprompt.train import fit

    started = time.perf_counter()
    cfg = InfoPromptConfig.from_dict(config)
    summary = fit(cfg, length_sorted_test(load_splits(cfg, log=lambda message: None)))
    return {"test_metric": summary["test_metric"],
            "best_valid_metric": summary["best_valid_metric"], "best_epoch": summary["best_epoch"],
            "seconds": time.perf_counter() - started, "config": config,
            **({"history": {name: [record.get(name, math.nan) for record in summary["history"]]
                            for name in keep}} if keep else {})}


def length_sorted_test(splits):
    """The test rows sorted by length: evaluation pads each batch to its longest row, so this
    only saves time (the metric does not depend on the order of the rows)."""
    import dataclasses

    import numpy as np

    lengths = [len(ids) for ids in splits.test.column("input_ids").to_pylist()]
    order = np.argsort(lengths, kind="stable")
    return dataclasses.replace(splits, test=splits.test.take(order))


def run_fits(jobs: dict[str, dict[str, Any]], store: Store, *, workers: int,
             job: Callable[[dict[str, Any]], dict[str, Any]] = fit_job,
             cost: Callable[[dict[str, Any]], float] = lambda config: 1.0) -> None:
    """Run every job (key -> config dict) not yet in store.data["runs"], seed by seed (an
    interrupted benchmark then has whole seeds), the costly fits first within a seed."""
    todo = [key for key in jobs if key not in store.data["runs"]]
    order = sorted(todo, key=lambda k: (jobs[k].get("seed", 0), -cost(jobs[k])))
    print(f"{len(order)} fits to run ({workers} workers)", flush=True)
    if not order:
        return
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(workers, mp_context=context,
                                     initializer=_init_worker) as pool:
        running = {pool.submit(job, jobs[key]): key for key in order}
        for done, future in enumerate(futures.as_completed(running), 1):
            key = running[future]
            store.data["runs"][key] = result = future.result()
            store.save()
            print(f"[{done}/{len(order)}] {key}: test {result['test_metric']:.4f} "
                  f"({result['seconds']:.0f}s; {(time.perf_counter() - started) / 60:.1f} min "
                  "in)", flush=True)
