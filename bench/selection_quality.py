"""Selection quality: which `--objective` picks configurations that do best on test.

For each task (64-shot SST-2 and CoLA by default) and each objective, tune/search.py runs on
split seed --search-seed (valid only: --final-seeds 0; no re-rank, --rerank-top 0, so that
the objective alone selects), with the same budget, sampler seed and space. The configuration
each search selects is then trained from scratch, with the search's epochs and schedule, on
seeds 0..N-1 (each seed draws its own train/valid split, the same for every objective, none
the search's) and scored once on test.
Objectives are compared seed by seed against `best` (the default) and against the paper's
default configuration: mean paired difference with its Student-t 95% CI.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, add_common_arguments, bench_config, emit, provenance, write_section
from _runs import Store, run_fits

SECTION = "bench/selection_quality.py"
OBJECTIVES = ("best", "last", "loglik", "best_loglik")
DEFAULT = "paper default"  # the unsearched configuration, as a reference row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["sst2", "cola"])
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES),
                        choices=OBJECTIVES)
    parser.add_argument("--shots", type=int, default=64)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--search-samples", type=int, default=16)
    parser.add_argument("--search-seed", type=int, default=100,
                        help="the searches' split seed, not one of --seeds (default: 100)")
    parser.add_argument("--seeds", type=int, default=3, help="final seeds 0..N-1 (default: 3)")
    parser.add_argument("--epochs", type=int, default=10,
                        help="epochs of each search trial and of each final fit (default: 10)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--storage-path", default=None,
                        help="where the searches keep their Ray results (default: a temp dir)")
    parser.add_argument("--results", type=Path, default=RESULTS / "selection_quality.json")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.tasks, args.shots, args.seeds, args.epochs = ["demo"], 16, 2, 1
        args.search_samples = 3
        args.objectives = ["best", "loglik"]
        args.results = Path(tempfile.mkdtemp(prefix="bench-selection-")) / "results.json"
        args.no_write = True
    return args


def search_key(task: str, objective: str, args: argparse.Namespace) -> str:
    return (f"{task}|{objective}|shots{args.shots}|n{args.search_samples}|"
            f"ep{args.epochs}|{args.model}|seed{args.search_seed}")


def selected(store: Store, task: str, label: str, args: argparse.Namespace) -> dict[str, Any]:
    if label == DEFAULT:
        return {}
    return store.data["searches"][search_key(task, label, args)]["best_config"]


def run_key(task: str, params: dict[str, Any], seed: int, args: argparse.Namespace) -> str:
    """By config, not by objective: two objectives that select the same config share runs."""
    return (f"{task}|{json.dumps(params, sort_keys=True)}|shots{args.shots}|ep{args.epochs}|"
            f"{args.model}|seed{seed}")


def run_search(args: argparse.Namespace, task: str, objective: str,
               storage: str) -> dict[str, Any]:
    from tune.search import search
    from tune.settings import SearchSettings

    started = time.perf_counter()
    cfg = bench_config(args, task=task, shots=args.shots, seed=args.search_seed,
                       epochs=args.epochs)
    name = f"bench-selection-{task}-{objective}-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = SearchSettings(config=cfg, num_samples=args.search_samples,
                              grace_period=min(2, args.epochs), final_seeds=0, rerank_top=0,
                              objective=objective, storage_path=storage, name=name)
    summary = search(settings)["summary"]
    return {"best_config": summary.best_config, "best_objective": summary.best_objective,
            "best_valid_metric": summary.best_valid_metric, "trials": len(summary.trials),
            "stopped_early": summary.stopped_early, "seconds": time.perf_counter() - started}


def table(store: Store, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """task -> row label -> per-seed test metrics and paired differences."""
    import math

    from infoprompt.metrics import paired_difference

    out: dict[str, dict[str, Any]] = {}
    for task in args.tasks:
        def seeds(label: str) -> list[float]:
            params = selected(store, task, label, args)
            values = [store.data["runs"].get(run_key(task, params, s, args), {})
                      .get("test_metric") for s in range(args.seeds)]
            return [math.nan if v is None else v for v in values]

        rows = {}
        for label in [*args.objectives, DEFAULT]:
            values = seeds(label)
            finite = [v for v in values if math.isfinite(v)]
            rows[label] = {
                "per_seed": values,
                "mean": sum(finite) / len(finite) if finite else math.nan,
                "config": selected(store, task, label, args),
                "vs_best": (paired_difference(values, seeds("best"))
                            if label != "best" and "best" in args.objectives else None),
                "vs_default": (paired_difference(values, seeds(DEFAULT))
                               if label != DEFAULT else None)}
        out[task] = rows
    return out


def _cell(paired: dict[str, Any] | None) -> str:
    if not paired or paired["n"] < 2:
        return "–"
    low, high = paired["ci"]
    return f"{paired['mean']:+.4f} [{low:+.4f}, {high:+.4f}] {paired['verdict']}"


def markdown(store: Store, results: dict[str, Any], args: argparse.Namespace,
             wall: float) -> str:
    lines = ["## Selection quality: which objective selects well "
             "(`bench/selection_quality.py`)", "",
             f"{args.shots}-shot, MiniLM. Each objective's search: tune/search.py on split seed "
             f"{args.search_seed}, {args.search_samples} trials of at most {args.epochs} epochs "
             "(TPE + ASHA, the same sampler seed and space, no re-rank), valid only. Its "
             f"selected config is then trained for the same {args.epochs} epochs on seeds "
             f"0..{args.seeds - 1} and scored on "
             "test (GLUE dev). Paired columns: row − reference on the same seeds, mean and "
             "Student-t 95% CI; 'better'/'worse' only when the interval excludes 0.", ""]
    for task, rows in results.items():
        lines += [f"### {task}", "",
                  "| objective | selected config | test per seed | mean | − best | − paper "
                  "default |", "|---|---|---|---|---|---|"]
        for label, row in rows.items():
            config = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in sorted(row["config"].items())) or "paper defaults"
            seeds = ", ".join(f"{v:.4f}" for v in row["per_seed"])
            lines.append(f"| {label} | {config} | {seeds} | {row['mean']:.4f} | "
                         f"{_cell(row['vs_best'])} | {_cell(row['vs_default'])} |")
        lines.append("")
    return "\n".join(lines + [provenance(wall)])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    store = Store(args.results)
    storage = args.storage_path or tempfile.mkdtemp(prefix="bench-selection-ray-")
    for task in args.tasks:
        for objective in args.objectives:
            key = search_key(task, objective, args)
            if key not in store.data["searches"]:
                store.data["searches"][key] = run_search(args, task, objective, storage)
                store.save()
    jobs = {}
    for task in args.tasks:
        base = bench_config(args, task=task, shots=args.shots, epochs=args.epochs)
        for label in [*args.objectives, DEFAULT]:
            params = selected(store, task, label, args)
            for seed in range(args.seeds):
                jobs[run_key(task, params, seed, args)] = \
                    base.replace(**params, seed=seed).to_dict()
    run_fits(jobs, store, workers=args.workers)
    wall = time.perf_counter() - started
    results = table(store, args)
    text = markdown(store, results, args, wall)
    print("\n" + text + "\n", flush=True)
    if not args.no_write:
        write_section(SECTION, text)
    figures = {"tasks": args.tasks, "objectives": args.objectives, "seeds": args.seeds,
               "results": results, "wall_s": round(wall, 1)}
    emit(figures)
    return figures


if __name__ == "__main__":
    main()
