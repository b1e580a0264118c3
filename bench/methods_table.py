"""Few-shot methods table shaped like the paper's Table 3 (64-shot CoLA and SST-2), on MiniLM.

Rows: a linear probe on the stored frozen features P' (LogisticRegression, C chosen on valid),
finetune, adapter, warp, idpg, infoprompt with the paper's estimator (paper defaults, bilinear
critic, and the cosine critic), infoprompt with our default in-batch negatives, the ablations
gamma0, beta0 (default estimator), pred_only, and the configurations tune/search.py returns
for infoprompt and, as its control, for pred_only (the same search over lr and r, β = γ = 0).

Protocol (every row the same): seeds 0..N-1 each draw their own 64-shot train and valid split
from GLUE train; a run trains `--epochs` epochs, keeps the parameters of its best-valid epoch
and scores them once on GLUE dev (the test split). Table cells are mean ± std over seeds.
The searched rows: tune/search.py (Optuna TPE + ASHA, `--search-samples` trials of at most
`--epochs` epochs — the rows' own epochs and schedule — then its re-rank against the default)
on split seeds from `--search-seed` on, disjoint from the rows' seeds, with --final-seeds 0 so
that it never sees test; the config it returns is then trained and scored exactly like every
other row.

Independent fits run in `--workers` processes (spawn) with one torch thread each. Every finished
run is saved to a JSON file at once; a re-run skips what that file already holds.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, add_common_arguments, bench_config, emit, provenance, write_section
from _runs import Store, open_store, run_fits

SECTION = "bench/methods_table.py"

# label -> (method, config overrides); the order is the table's.
FIXED_ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "Finetuning": ("finetune", {}),
    "Adapter": ("adapter", {}),
    "WARP": ("warp", {}),
    "IDPG": ("idpg", {}),
    "InfoPrompt (bilinear critic, paper defaults)": ("infoprompt", {"estimator": "paper"}),
    "InfoPrompt, cosine critic (paper estimator)": ("infoprompt", {"estimator": "paper",
                                                                   "critic": "cosine"}),
    "InfoPrompt, in-batch negatives (our default)": ("infoprompt", {}),
    "γ = 0 (gamma0)": ("gamma0", {}),
    "β = 0 (beta0)": ("beta0", {}),
    "γ = 0, β = 0 (pred_only)": ("pred_only", {}),
}
PROBE = "Linear probe on P' (LogisticRegression)"

# The paper's Table 3, 64-shot columns (RoBERTa-large), copied from the paper's text.
PAPER = {
    "Finetuning": {"cola": 0.1746, "sst2": 0.8027},
    "Adapter": {"cola": 0.0627, "sst2": 0.4908},
    "WARP": {"cola": 0.0749, "sst2": 0.5872},
    "InfoPrompt (bilinear critic, paper defaults)": {"cola": 0.1567, "sst2": 0.6697},
    "γ = 0 (gamma0)": {"cola": 0.1479, "sst2": 0.664},
    "β = 0 (beta0)": {"cola": 0.1372, "sst2": 0.5631},
    "γ = 0, β = 0 (pred_only)": {"cola": 0.0919, "sst2": 0.5505},
}
TASK_TITLE = {"cola": "CoLA", "sst2": "SST2", "demo": "demo"}
# Rough relative cost of one fit, to start the long ones first (two workers finish together).
COST = {"finetune": 3.0, "adapter": 1.1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["cola", "sst2"])
    parser.add_argument("--shots", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default: 5)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--workers", type=int, default=2,
                        help="parallel fit processes, one torch thread each (default: 2)")
    parser.add_argument("--rows", nargs="+", default=None,
                        help="only these row labels (default: all); 'probe', 'search' or a "
                             "method name also select rows")
    parser.add_argument("--search-samples", type=int, default=12)
    parser.add_argument("--search-seed", type=int, default=100,
                        help="the searches' first split seed; their draws and re-rank draws "
                             "follow it, so it must be >= --seeds (default: 100)")
    parser.add_argument("--split-draws", type=int, default=1,
                        help="tune/search.py --split-draws (default: 1)")
    parser.add_argument("--rerank-top", type=int, default=2,
                        help="tune/search.py --rerank-top (default: 2)")
    parser.add_argument("--rerank-draws", type=int, default=3,
                        help="tune/search.py --rerank-draws (default: 3)")
    parser.add_argument("--storage-path", default=None,
                        help="where the searches keep their Ray results "
                             "(default: a temporary folder)")
    parser.add_argument("--results", type=Path, default=RESULTS / "methods_table.json",
                        help="per-run results, saved as they finish and reused on a re-run")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.search_seed < args.seeds:
        parser.error(f"--search-seed {args.search_seed} overlaps the rows' seeds "
                     f"0..{args.seeds - 1}")
    if args.smoke:
        args.tasks, args.shots, args.seeds, args.epochs = ["demo"], 16, 1, 1
        args.search_samples, args.rerank_top, args.rerank_draws = 2, 1, 2
        args.rows = args.rows or ["probe", "infoprompt", "finetune", "search"]
        args.results = Path(tempfile.mkdtemp(prefix="bench-methods-")) / "methods_table.json"
        args.no_write = True
    return args


# --- the runs ------------------------------------------------------------------------------


def base_config(args: argparse.Namespace, task: str):
    return bench_config(args, task=task, shots=args.shots, epochs=args.epochs)


def probe_job(cfg) -> dict[str, Any]:
    """LogisticRegression on the frozen mean-pooled features P' (column p_free), C on valid."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from infoprompt.metrics import classification_metrics
    from infoprompt.store import load_splits

    started = time.perf_counter()
    splits = load_splits(cfg, log=lambda message: None)
    metric, n_labels = splits.task.metric, splits.task.num_labels

    def xy(table):
        column = table.column("p_free").combine_chunks()
        x = np.asarray(column.values.to_numpy(zero_copy_only=False)).reshape(len(column), -1)
        return x, table.column("label").to_numpy()

    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = map(
        xy, (splits.train, splits.valid, splits.test))
    scores = {}
    for c in (0.01, 0.1, 1.0, 10.0, 100.0):
        model = LogisticRegression(C=c, max_iter=5000).fit(x_train, y_train)
        scores[c] = classification_metrics(y_valid.tolist(), model.predict(x_valid).tolist(),
                                           n_labels)[metric]
    best_c = max(scores, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    model = LogisticRegression(C=best_c, max_iter=5000).fit(x_train, y_train)
    test = classification_metrics(y_test.tolist(), model.predict(x_test).tolist(),
                                  n_labels)[metric]
    return {"test_metric": test, "best_valid_metric": scores[best_c], "C": best_c,
            "valid_by_C": {str(c): v for c, v in scores.items()},
            "seconds": time.perf_counter() - started}


def run_search(args: argparse.Namespace, task: str, method: str,
               storage: str) -> dict[str, Any]:
    """tune/search.py with the rows' epochs, on split seeds the rows never use, valid only
    (--final-seeds 0): the config it returns."""
    from tune.search import main as search_main

    started = time.perf_counter()
    name = f"bench-methods-{task}-{method}-{time.strftime('%Y%m%d-%H%M%S')}"
    argv = ["--task", task, "--shots", str(args.shots), "--model", args.model,
            "--cache-dir", args.cache_dir, "--epochs", str(args.epochs),
            "--num-samples", str(args.search_samples), "--split-draws", str(args.split_draws),
            "--rerank-top", str(args.rerank_top), "--rerank-draws", str(args.rerank_draws),
            "--grace-period", str(min(2, args.epochs)),
            "--final-seeds", "0", "--seed", str(args.search_seed), "--method", method,
            "--storage-path", storage, "--name", name]
    if task != "demo" and args.data_dir:
        argv += ["--data-dir", args.data_dir]
    print(f"search: python tune/search.py {' '.join(argv)}", flush=True)
    out = search_main(argv)
    summary = out["summary"]
    return {"returned_config": summary.returned_config,
            "decision": summary.rerank.get("decision", {}).get("reason"),
            "best_config": summary.best_config, "best_valid_metric": summary.best_valid_metric,
            "best_objective": summary.best_objective,
            "trials": len(summary.trials), "stopped_early": summary.stopped_early,
            "trial_epochs": sum(t.epochs for t in summary.trials) * args.split_draws,
            "path": out["path"], "seconds": time.perf_counter() - started, "argv": argv}


def run_key(task: str, label: str, seed: int, args: argparse.Namespace) -> str:
    if label in SEARCHED:  # the config depends on the search's settings
        label = f"{label}|{search_key(task, SEARCHED[label], args)}"
    return f"{task}|{label}|shots{args.shots}|ep{args.epochs}|{args.model}|seed{seed}"


def search_key(task: str, method: str, args: argparse.Namespace) -> str:
    return (f"{task}|{method}|draws{args.split_draws}|rerank{args.rerank_top}x"
            f"{args.rerank_draws}|shots{args.shots}|n{args.search_samples}|ep{args.epochs}|"
            f"{args.model}|seed{args.search_seed}")


# label -> the method searched; its row trains the config the search returns.
SEARCHED = {"InfoPrompt, searched": "infoprompt",
            "γ = 0, β = 0 (pred_only), searched": "pred_only"}


def selected(label: str, method: str | None, args: argparse.Namespace) -> bool:
    if not args.rows:
        return True
    keys = {label}
    if method:
        keys.add(method)
    if label == PROBE:
        keys.add("probe")
    if label in SEARCHED:
        keys.add("search")
    return bool(keys & set(args.rows))


# --- the table -----------------------------------------------------------------------------


# Every row is compared with these, seed by seed (the same seed draws the same splits).
REFERENCES = {"InfoPrompt": "InfoPrompt (bilinear critic, paper defaults)",
              "our default": "InfoPrompt, in-batch negatives (our default)",
              "pred_only": "γ = 0, β = 0 (pred_only)",
              "searched pred_only": "γ = 0, β = 0 (pred_only), searched"}


def per_seed(store: Store, task: str, label: str, args: argparse.Namespace) -> list[float]:
    """Test metric by seed 0..N-1; NaN where the run is missing or diverged."""
    runs = store.data["runs"]
    values = [runs.get(run_key(task, label, s, args), {}).get("test_metric")
              for s in range(args.seeds)]
    return [v if v is not None and math.isfinite(v) else math.nan for v in values]


def aggregate(store: Store, labels: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from infoprompt.metrics import paired_difference

    table: dict[str, dict[str, dict[str, Any]]] = {}
    for label in labels:
        for task in args.tasks:
            seeds = per_seed(store, task, label, args)
            values = [v for v in seeds if math.isfinite(v)]
            if not values:
                continue
            table.setdefault(label, {})[task] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "n": len(values), "per_seed": seeds,
                "paired": {name: paired_difference(seeds, per_seed(store, task, reference, args))
                           for name, reference in REFERENCES.items() if reference != label}}
    return table


def paired_cell(paired: dict[str, Any] | None) -> str:
    """'+0.0123 [-0.0100, +0.0346]', bold where the interval excludes 0."""
    if not paired or paired["n"] < 2:
        return "–"
    low, high = paired["ci"]
    text = f"{paired['mean']:+.4f} [{low:+.4f}, {high:+.4f}]"
    return f"**{text}**" if paired["verdict"] != "no difference shown" else text


def markdown(store: Store, table: dict[str, Any], labels: list[str],
             args: argparse.Namespace, wall: float) -> str:
    tasks = args.tasks
    metric = {"cola": "MCC", "sst2": "acc.", "demo": "acc."}
    head = ["method"] + [f"{TASK_TITLE.get(t, t)} ({args.shots}) {metric.get(t, '')}, ours"
                         for t in tasks]
    head += [f"{TASK_TITLE.get(t, t)} (64), paper" for t in tasks if t in ("cola", "sst2")]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for label in labels:
        cells = [label]
        for task in tasks:
            stats = table.get(label, {}).get(task)
            if stats is None:
                cells.append("–")
            else:
                partial = "" if stats["n"] == args.seeds else f" (n={stats['n']})"
                cells.append(f"{stats['mean']:.4f} ± {stats['std']:.4f}{partial}")
        for task in tasks:
            if task in ("cola", "sst2"):
                value = PAPER.get(label, {}).get(task)
                cells.append("–" if value is None else f"{value:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    paired_head = ["method"] + [f"{TASK_TITLE.get(t, t)}: − {name}" for t in tasks
                                for name in REFERENCES]
    paired_lines = ["| " + " | ".join(paired_head) + " |", "|---" * len(paired_head) + "|"]
    for label in labels:
        cells = [label] + [paired_cell(table.get(label, {}).get(t, {}).get("paired", {})
                                       .get(name)) for t in tasks for name in REFERENCES]
        paired_lines.append("| " + " | ".join(cells) + " |")
    searches = []
    def shown(config: dict[str, Any]) -> str:
        return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in sorted(config.items()))

    for task in tasks:
        for method in SEARCHED.values():
            found = store.data["searches"].get(search_key(task, method, args))
            if found:
                searches.append(
                    f"- {TASK_TITLE.get(task, task)}, {method}: returned "
                    f"{shown(found['returned_config'])}; best valid "
                    f"{found['best_valid_metric']:.4f} with {shown(found['best_config'])} "
                    f"({found['trials']} trials, {found['stopped_early']} stopped by ASHA, "
                    f"{found['trial_epochs']} trial-epochs, {found['seconds'] / 60:.1f} min). "
                    f"Re-rank: {found['decision'] or 'none (--rerank-top 0)'}.")
    return "\n".join([
        "## Few-shot methods table (`bench/methods_table.py`)", "",
        f"Test metric (GLUE dev; CoLA: Matthews corr., SST-2: accuracy), mean ± std over "
        f"{args.seeds} seeds, {args.shots}-shot, encoder {args.model} (ours) vs RoBERTa-large "
        "(paper, Table 3, 64-shot columns; the paper has no IDPG, linear-probe, cosine or "
        "searched rows).", "",
        *lines, "",
        f"Paired differences (row − reference, seed by seed on the same splits; mean and "
        f"Student-t 95% CI over the {args.seeds} seeds; **bold** where the interval excludes 0, "
        "the only case in which one is called better or worse):", "",
        *paired_lines, "",
        f"Protocol: seed s draws its own class-balanced {args.shots}-shot train and a disjoint "
        f"{args.shots}-shot valid split from GLUE train; each run trains {args.epochs} epochs "
        "(batch 8, paper defaults: lr 1e-3, β 0.1, γ 0.05, K 32, r 64, n_p 4; finetune: "
        "encoder lr 2e-5; the rows marked paper use the paper's InfoNCE negatives, the others "
        "our default in-batch negatives), keeps its best-valid epoch and is scored once on "
        "GLUE dev. Linear "
        "probe: sklearn LogisticRegression on the stored prompt-free mean-pooled features P', "
        "C ∈ {0.01, 0.1, 1, 10, 100} chosen on valid, trained on train. Searched rows: "
        f"`tune/search.py --method infoprompt` and, as its control, `--method pred_only` "
        f"(Optuna TPE + ASHA, {args.search_samples} trials of at most {args.epochs} epochs — "
        "the rows' epochs and schedule — grace 2, reduction 3, paper defaults as the first "
        f"trial, --split-draws {args.split_draws}, then the re-rank of its top "
        f"{args.rerank_top} against the default on {args.rerank_draws} further draws, "
        f"--final-seeds 0) on split seeds from {args.search_seed} on, which the rows never use "
        "— it never sees test — then the config it returns is trained on every seed like the "
        "other rows. The paper's "
        "γ = 0 row keeps β = 0.05 and its β = 0 row γ = 0.1; ours keep the defaults (β 0.1, "
        "γ 0.05).", "",
        "Searches:", *searches, "",
        provenance(wall) + f" Fits ran in {args.workers} worker processes, 1 torch thread "
        f"each. Per-run results: `{_display(args.results)}`.",
    ])


def _display(path: Path) -> str:
    from _common import ROOT

    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    store = open_store(args.results, (base_config(args, task).replace(seed=seed)
                                      for task in args.tasks for seed in range(args.seeds)))

    labels = [PROBE] if selected(PROBE, None, args) else []
    labels += [label for label, (method, _) in FIXED_ROWS.items()
               if selected(label, method, args)]

    # 1. Searches (Ray uses every core: nothing else runs meanwhile).
    storage = args.storage_path or tempfile.mkdtemp(prefix="bench-methods-ray-")
    searched = [label for label in SEARCHED if selected(label, None, args)]
    for task in args.tasks:
        for label in searched:
            key = search_key(task, SEARCHED[label], args)
            if key not in store.data["searches"]:
                store.data["searches"][key] = run_search(args, task, SEARCHED[label], storage)
                store.save()
    labels += searched

    # 2. Linear probes (seconds, in this process).
    if PROBE in labels:
        for task in args.tasks:
            for seed in range(args.seeds):
                key = run_key(task, PROBE, seed, args)
                if key not in store.data["runs"]:
                    store.data["runs"][key] = probe_job(base_config(args, task).replace(seed=seed))
                    store.save()

    # 3. Every other run, in worker processes.
    jobs: dict[str, dict[str, Any]] = {}
    for task in args.tasks:
        base = base_config(args, task)
        for label in labels:
            if label == PROBE:
                continue
            if label in FIXED_ROWS:
                method, overrides = FIXED_ROWS[label]
                params = {"method": method, **overrides}
            else:
                found = store.data["searches"][search_key(task, SEARCHED[label], args)]
                params = {"method": SEARCHED[label], **found["returned_config"]}
            for seed in range(args.seeds):
                key = run_key(task, label, seed, args)
                jobs[key] = base.replace(**params, seed=seed).to_dict()
    run_fits(jobs, store, workers=args.workers, cost=lambda c: COST.get(c["method"], 1.0))

    wall = time.perf_counter() - started
    store.data["last_wall_seconds"] = wall
    store.save()
    table = aggregate(store, labels, args)
    text = markdown(store, table, labels, args, wall)
    print("\n" + text + "\n", flush=True)
    if not args.no_write:
        write_section(SECTION, text)
    figures = {"tasks": args.tasks, "seeds": args.seeds, "epochs": args.epochs,
               "mean": {label: {t: s["mean"] for t, s in row.items()}
                        for label, row in table.items()},
               "std": {label: {t: s["std"] for t, s in row.items()}
                       for label, row in table.items()},
               "paired": {label: {t: s["paired"] for t, s in row.items()}
                          for label, row in table.items()},
               "searches": {k: {"returned_config": v.get("returned_config"),
                                "best_config": v["best_config"],
                                "best_valid_metric": v["best_valid_metric"]}
                            for k, v in store.data["searches"].items()},
               "wall_s": round(wall, 1), "results": str(args.results)}
    emit(figures)
    return figures


if __name__ == "__main__":
    main()
