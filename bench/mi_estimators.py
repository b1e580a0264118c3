"""InfoNCE estimators against pred_only (issue 11): do the MI terms keep a signal, and do they
help the test metric?

Rows: pred_only (β = γ = 0, the baseline) and InfoPrompt (paper defaults: β 0.1, γ 0.05,
K 32) with each estimator configuration in CONFIGS. Seeds 0..N-1 each draw their own 64-shot
train and valid split; a run trains `--epochs` epochs, keeps its best-valid epoch and is scored
once on GLUE dev (the test split), as in bench/methods_table.py.

Figures:
- the diagnostics of every epoch (mean over seeds): each NCE term's shuffle gap (the loss with
  P̄ rolled across the batch minus the loss itself: 0 when the critic ignores the prompt) and
  each MI term's gradient norm on the generator as a ratio to the prediction loss's;
- the test metric of each configuration paired with pred_only on the same seeds (seed s, same
  split), with the Student-t 95% CI of `infoprompt.metrics.paired_difference`;
- the cost of the diagnostics: epochs with and without them, interleaved (SST-2, one thread).

Independent fits run in `--workers` processes (spawn) with one torch thread each. Every finished
run is saved to a JSON file at once; a re-run skips what that file already holds.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, add_common_arguments, bench_config, emit, provenance, write_section
from _runs import Store, fit_job, open_store, run_fits
from methods_table import _display

SECTION = "bench/mi_estimators.py"
BASELINE = "pred_only"
# label -> config overrides of InfoPromptConfig (method infoprompt unless given); table order.
CONFIGS: dict[str, dict[str, Any]] = {
    BASELINE: {"method": "pred_only"},
    "paper, bilinear": {"estimator": "paper"},
    "paper, cosine": {"estimator": "paper", "critic": "cosine"},
    "in_batch, bilinear": {"estimator": "in_batch"},
    "in_batch, cosine": {"estimator": "in_batch", "critic": "cosine"},
    "in_batch, bilinear, vib 0.1": {"estimator": "in_batch", "vib": 0.1},
}
# Per-epoch figures kept from each run's history.
KEPT = ("valid_metric", "loss_pred", "nce_rep", "nce_head", "nce_rep_shuffled",
        "nce_head_shuffled", "grad_pred", "grad_rep", "grad_head", "kl")
GAP = 0.1  # nats: a shuffle gap above this says the critic reads the prompt
TASK_TITLE = {"cola": "CoLA", "sst2": "SST-2", "demo": "demo"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["sst2", "cola"])
    parser.add_argument("--shots", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default: 5)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--workers", type=int, default=2,
                        help="parallel fit processes, one torch thread each (default: 2)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                        metavar="LABEL", help="only these rows (pred_only is always run)")
    parser.add_argument("--cost-epochs", type=int, default=10,
                        help="epochs of each kind in the diagnostics-cost measurement")
    parser.add_argument("--results", type=Path, default=RESULTS / "mi_estimators.json",
                        help="per-run results, saved as they finish and reused on a re-run")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if BASELINE not in args.configs:
        args.configs.insert(0, BASELINE)
    if args.smoke:
        args.tasks, args.shots, args.seeds, args.epochs, args.cost_epochs = \
            ["demo"], 16, 2, 2, 1
        args.configs = [BASELINE, "paper, bilinear", "in_batch, bilinear, vib 0.1"]
        args.results = Path(tempfile.mkdtemp(prefix="bench-mi-")) / "mi_estimators.json"
        args.no_write = True
    return args


# --- the runs ------------------------------------------------------------------------------


def run_key(task: str, label: str, seed: int, args: argparse.Namespace) -> str:
    return f"{task}|{label}|shots{args.shots}|ep{args.epochs}|{args.model}|seed{seed}"


def diagnostics_cost(args: argparse.Namespace, task: str) -> dict[str, Any]:
    """Epoch time with and without cfg.diagnostics: two runs of the same configuration (the
    same batches: diagnostics change nothing trained) whose epochs alternate, in a rotating
    order, so machine noise hits both alike. One torch thread, as in a trial. CPU time (this
    process's) is the headline: on a shared machine, wall time also counts the neighbours."""
    import torch

    from infoprompt.store import load_splits
    from infoprompt.train import Training

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = bench_config(args, task=task, shots=args.shots, epochs=args.cost_epochs + 1)
        splits = load_splits(cfg, with_test=False, log=lambda message: None)
        runs = {on: Training(cfg.replace(diagnostics=on), splits).epochs()
                for on in (True, False)}
        cpu: dict[bool, list[float]] = {True: [], False: []}
        wall: dict[bool, list[float]] = {True: [], False: []}
        for epoch in range(cfg.epochs):
            for on in ((True, False) if epoch % 2 else (False, True)):
                started = time.process_time()
                record = next(runs[on])
                if epoch > 0:  # the first epoch of each warms up
                    cpu[on].append(time.process_time() - started)
                    wall[on].append(record["epoch_seconds"])
    finally:
        torch.set_num_threads(threads)
    out: dict[str, Any] = {"task": task, "epochs": len(cpu[True]),
                           "steps": math.ceil(len(splits.train) / cfg.batch_size)}
    for name, seconds in (("cpu", cpu), ("wall", wall)):
        with_, without = statistics.median(seconds[True]), statistics.median(seconds[False])
        out[name] = {"with_s": with_, "without_s": without, "ratio": with_ / without,
                     "samples": {"with": seconds[True], "without": seconds[False]}}
    return out


# --- the figures ---------------------------------------------------------------------------


def _seed_runs(store: Store, task: str, label: str, args: argparse.Namespace) -> list[dict]:
    runs = [store.data["runs"].get(run_key(task, label, s, args)) for s in range(args.seeds)]
    return [run for run in runs if run is not None]


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def diagnostics(runs: list[dict]) -> dict[str, list[float]]:
    """Per epoch, over seeds: the mean shuffle gaps and the MI gradients as ratios to the
    prediction gradient (ratio of the seed means: one batch's norm per epoch is noisy)."""
    epochs = min(len(run["history"]["nce_rep"]) for run in runs)

    def mean(name: str, epoch: int) -> float:
        return _mean([run["history"][name][epoch] for run in runs])

    out: dict[str, list[float]] = {"gap_rep": [], "gap_head": [], "ratio_rep": [],
                                   "ratio_head": []}
    for e in range(epochs):
        for term in ("rep", "head"):
            out[f"gap_{term}"].append(mean(f"nce_{term}_shuffled", e) - mean(f"nce_{term}", e))
            out[f"ratio_{term}"].append(mean(f"grad_{term}", e) / mean("grad_pred", e))
    return out


def aggregate(store: Store, args: argparse.Namespace) -> dict[str, Any]:
    from infoprompt.metrics import paired_difference

    table: dict[str, Any] = {}
    for task in args.tasks:
        base = {run_key(task, BASELINE, s, args): s for s in range(args.seeds)}
        baseline = {s: store.data["runs"][k]["test_metric"] for k, s in base.items()
                    if k in store.data["runs"]}
        for label in args.configs:
            runs = _seed_runs(store, task, label, args)
            if not runs:
                continue
            row = table.setdefault(label, {})
            values = [run["test_metric"] for run in runs]
            seeds = [run["config"]["seed"] for run in runs]
            entry = {"n": len(values), "mean": statistics.fmean(values),
                     "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                     "diagnostics": diagnostics(runs)}
            paired = [s for s in seeds if s in baseline]
            if label != BASELINE and paired:
                mine = dict(zip(seeds, values))
                entry["vs_pred_only"] = paired_difference([mine[s] for s in paired],
                                                          [baseline[s] for s in paired])
            row[task] = entry
    for label, row in table.items():
        verdicts = [row[t]["vs_pred_only"]["verdict"] for t in args.tasks
                    if "vs_pred_only" in row.get(t, {})]
        row["goal"] = (len(verdicts) == len(args.tasks) and "better" in verdicts
                       and "worse" not in verdicts)
        # The MI terms keep a signal: on every task, both shuffle gaps above GAP in at least
        # half of the epochs.
        row["signal"] = label != BASELINE and all(
            2 * _epochs_above(row[t]["diagnostics"]) >= len(row[t]["diagnostics"]["gap_rep"])
            for t in args.tasks if t in row)
    return table


def _epochs_above(diagnostics: dict[str, list[float]]) -> int:
    """Epochs in which both shuffle gaps exceed GAP."""
    return sum(r > GAP and h > GAP
               for r, h in zip(diagnostics["gap_rep"], diagnostics["gap_head"]))


def _signed(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:+.4f}"


def _at(series: list[float], epochs: list[int], digits: str) -> str:
    return " / ".join(format(series[e - 1], digits) if e <= len(series) else "–"
                      for e in epochs)


def markdown(table: dict[str, Any], cost: dict[str, Any], args: argparse.Namespace,
             footer: str) -> str:
    tasks = args.tasks
    metric = {"cola": "MCC", "sst2": "acc.", "demo": "acc."}
    head = ["configuration"]
    head += [f"{TASK_TITLE.get(t, t)} {metric.get(t, '')} (mean ± std)" for t in tasks]
    head += [f"{TASK_TITLE.get(t, t)}: − pred_only [95% CI]" for t in tasks] + ["goal"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for label in args.configs:
        row = table.get(label, {})
        cells = [label]
        for task in tasks:
            stats = row.get(task)
            cells.append("–" if stats is None else
                         f"{stats['mean']:.4f} ± {stats['std']:.4f}"
                         + ("" if stats["n"] == args.seeds else f" (n={stats['n']})"))
        for task in tasks:
            paired = row.get(task, {}).get("vs_pred_only")
            cells.append("–" if paired is None else
                         f"{_signed(paired['mean'])} [{_signed(paired['ci'][0])}, "
                         f"{_signed(paired['ci'][1])}] {paired['verdict']}")
        cells.append("–" if label == BASELINE else ("met" if row.get("goal") else "not met"))
        lines.append("| " + " | ".join(cells) + " |")

    epochs = sorted({e for e in (1, 8, args.epochs) if e <= args.epochs})
    shown = "/".join(str(e) for e in epochs)
    diag = [f"| configuration | task | rep gap, ep {shown} | head gap, ep {shown} | "
            f"rep grad / pred grad, ep {shown} | head grad / pred grad, ep {shown} | "
            f"epochs with both gaps > {GAP:g} |", "|---" * 7 + "|"]
    for label in args.configs:
        for task in tasks:
            stats = table.get(label, {}).get(task)
            if stats is None:
                continue
            d = stats["diagnostics"]
            above = _epochs_above(d)
            cells = [_at(d[name], epochs, digits) for name, digits in (
                ("gap_rep", ".3f"), ("gap_head", ".3f"), ("ratio_rep", ".2g"),
                ("ratio_head", ".2g"))]
            diag.append(f"| {label} | {TASK_TITLE.get(task, task)} | {' | '.join(cells)} | "
                        f"{above}/{len(d['gap_rep'])} |")
    met = [label for label in args.configs if table.get(label, {}).get("goal")]
    signal = [label for label in args.configs if table.get(label, {}).get("signal")]
    return "\n".join([
        "## InfoNCE estimators against pred_only (`bench/mi_estimators.py`)", "",
        f"Test metric (GLUE dev; CoLA: Matthews corr., SST-2: accuracy) over {args.seeds} seeds, "
        f"{args.shots}-shot, encoder {args.model}, and each configuration minus `pred_only` "
        "paired by seed (same split), with the Student-t 95% CI of "
        "`metrics.paired_difference`: \"better\" only when the CI excludes 0. Goal (issue 11): "
        "the CI lies above 0 on one task and not below 0 on the other.", "",
        *lines, "",
        "Configurations that meet the goal: " + ("; ".join(met) if met else "none") + ".", "",
        f"Diagnostics, mean over seeds per epoch (ep {shown}). Shuffle gap: the NCE term with "
        "P̄ rolled by one across the batch (same noise and negatives) minus the term, in nats; "
        "0 means the critic ignores the prompt. Gradient ratio: the β- or γ-weighted term's "
        "gradient norm on the generator over the prediction loss's (the rest of the objective, "
        "so vib·KL too), one batch per epoch, ratio of the seed means. pred_only trains no "
        "critic (β = γ = 0): its gaps are those of the untrained critics.", "",
        *diag, "",
        f"MI terms that keep a signal (both gaps > {GAP:g} in at least half of the epochs, on "
        "every task): " + ("; ".join(signal) if signal else "none") + ".", "",
        f"Cost of the diagnostics (`diagnostics=True`, the default): a "
        f"{TASK_TITLE.get(cost['task'], cost['task'])} {args.shots}-shot epoch "
        f"({cost['steps']} steps + the valid evaluation, one thread) takes "
        f"{cost['cpu']['with_s']:.2f} s of CPU time with them and "
        f"{cost['cpu']['without_s']:.2f} s without, ×{cost['cpu']['ratio']:.3f} (wall time "
        f"{cost['wall']['with_s']:.2f} s and {cost['wall']['without_s']:.2f} s, "
        f"×{cost['wall']['ratio']:.3f}); medians of {cost['epochs']} interleaved epochs "
        "each.", "",
        f"Protocol: seed s draws its own class-balanced {args.shots}-shot train and a disjoint "
        f"{args.shots}-shot valid split from GLUE train; each run trains {args.epochs} epochs "
        "(batch 8, lr 1e-3, r 64, n_p 4; InfoPrompt rows β 0.1, γ 0.05, K 32 under `paper`, "
        "K = the batch under `in_batch`, hard negative on, cosine τ 0.1), keeps its best-valid "
        "epoch and is scored once on GLUE dev.", "",
        footer + f" Fits ran in {args.workers} worker processes, 1 torch thread each. "
        f"Per-run results: `{_display(args.results)}`.",
    ])


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    store = open_store(args.results, (bench_config(args, task=task, shots=args.shots, seed=seed)
                                      for task in args.tasks for seed in range(args.seeds)))

    # Measured before the pool starts, so the workers do not disturb it.
    cost_task = args.tasks[0]
    cost_key = f"cost|{cost_task}|shots{args.shots}|{args.model}|n{args.cost_epochs}"
    if cost_key not in store.data:
        store.data[cost_key] = diagnostics_cost(args, cost_task)
        store.save()
    cost = store.data[cost_key]
    print(f"diagnostics cost: x{cost['cpu']['ratio']:.3f} CPU time per epoch", flush=True)

    jobs: dict[str, dict[str, Any]] = {}
    for seed in range(args.seeds):  # seed by seed: an interrupted run has whole seeds
        for task in args.tasks:
            base = bench_config(args, task=task, shots=args.shots, epochs=args.epochs)
            for label in args.configs:
                key = run_key(task, label, seed, args)
                jobs[key] = base.replace(**{"method": "infoprompt", **CONFIGS[label]},
                                         seed=seed).to_dict()
    trained = [key for key in jobs if key not in store.data["runs"]]
    run_fits(jobs, store, workers=args.workers, job=functools.partial(fit_job, keep=KEPT))

    # The footer (command, wall time, machine) of the invocations that trained something: a
    # re-run that only rewrites the section reports the run that made the figures.
    wall = time.perf_counter() - started
    if trained:
        store.data["wall_seconds"] = store.data.get("wall_seconds", 0.0) + wall
        store.data["provenance"] = provenance(store.data["wall_seconds"])
        store.save()
    wall = store.data.get("wall_seconds", wall)
    table = aggregate(store, args)
    text = markdown(table, cost, args, store.data.get("provenance") or provenance(wall))
    print("\n" + text + "\n", flush=True)
    if not args.no_write:
        write_section(SECTION, text)
    figures = {"tasks": args.tasks, "seeds": args.seeds, "epochs": args.epochs,
               "diagnostics_cost": {name: {k: cost[name][k] for k in
                                           ("with_s", "without_s", "ratio")}
                                    for name in ("cpu", "wall")},
               "table": table, "wall_s": round(wall, 1), "results": str(args.results)}
    emit(figures)
    return figures


if __name__ == "__main__":
    main()
