"""Search quality: what each search's incumbent scores on test at fixed compute budgets.

For each split seed s (>= 5 for a claim), two searches of tune/search.py run on the same
space, task and split seeds:
  (a) TPE + ASHA, the search's defaults, with --split-draws and the re-rank (items 1-3 of
      issue 17): what a user gets;
  (b) random + FIFO: Optuna's RandomSampler, every trial run to --epochs, no re-rank.
Both start at the paper's defaults (the first trial of every search). Every report of a
trial is --split-draws trial-epochs; ordering all reports of a search by when they happened
(each trial's progress.csv) gives its incumbent — the trial with the highest objective so
far — after any number of trial-epochs. At budgets of 1/4, 1/3, 1/2 and all of (b)'s total
trial-epochs, each search's incumbent config (and (a)'s re-ranked, returned config) is
re-trained from scratch on --final-draws split seeds that neither search nor the re-rank saw,
with the searches' epochs and schedule, and scored on test (GLUE dev). The headline: (a) − (b)
paired by seed, at each budget and against (b)'s final incumbent, with 95% CIs.

This replaces bench/search_efficiency.py's "trial-epochs to reach random's best valid":
that compared against a maximum over many noisy valid evaluations and rewarded the search
that evaluated more (issue 17).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    RESULTS,
    ROOT,
    add_common_arguments,
    bench_config,
    emit,
    provenance,
    trial_progress,
    write_section,
)

SECTION = "bench/search_quality.py"
BUDGETS = (Fraction(1, 4), Fraction(1, 3), Fraction(1, 2), Fraction(1))
SEARCHES = {"tpe_asha": "(a) TPE + ASHA", "random_fifo": "(b) random + FIFO"}
SEED_STRIDE = 100  # split seed s uses seeds s*100 …: the searches', re-rank's, final draws


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--shots", type=int, default=64)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="one pair of searches per value; seed s draws its splits from "
                             f"split seeds {SEED_STRIDE}·s onwards (default: 0 1 2 3 4)")
    parser.add_argument("--random-samples", type=int, default=16,
                        help="(b)'s trials; its trial-epochs set the budgets (default: 16)")
    parser.add_argument("--tpe-samples", type=int, default=40,
                        help="(a)'s trials, enough for ASHA to spend (b)'s budget "
                             "(default: 40)")
    parser.add_argument("--epochs", type=int, default=10, help="max epochs per trial")
    parser.add_argument("--grace-period", type=int, default=2)
    parser.add_argument("--split-draws", type=int, default=1, help="(a) and (b)")
    parser.add_argument("--rerank-top", type=int, default=2, help="(a) only")
    parser.add_argument("--rerank-draws", type=int, default=3, help="(a) only")
    parser.add_argument("--final-draws", type=int, default=1,
                        help="split seeds each incumbent is tested on (its test score is "
                             "the mean)")
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--storage-path", default=None,
                        help="Ray results folder (default: a temporary one)")
    parser.add_argument("--plot", type=Path, default=RESULTS / "search_quality.png")
    parser.add_argument("--json", type=Path, default=RESULTS / "search_quality.json",
                        help="one row per seed and budget, and the paired summary")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.task, args.shots, args.seeds, args.epochs = "demo", 16, [0], 2
        args.random_samples, args.tpe_samples, args.grace_period = 2, 3, 1
        args.rerank_top, args.rerank_draws = 1, 2
        scratch = Path(tempfile.mkdtemp(prefix="bench-quality-"))
        args.plot, args.json = scratch / "search_quality.png", scratch / "search_quality.json"
        args.no_write = True
    args.grace_period = min(args.grace_period, args.epochs)
    return args


def settings_for(args: argparse.Namespace, seed: int, label: str):
    from tune.settings import SearchSettings

    cfg = bench_config(args, task=args.task, shots=args.shots, seed=SEED_STRIDE * seed,
                       epochs=args.epochs)
    tpe = label == "tpe_asha"
    return SearchSettings(
        config=cfg, num_samples=args.tpe_samples if tpe else args.random_samples,
        sampler="tpe" if tpe else "random", scheduler="asha" if tpe else "fifo",
        grace_period=args.grace_period, split_draws=args.split_draws,
        rerank_top=args.rerank_top if tpe else 0, rerank_draws=args.rerank_draws,
        final_seeds=0, max_concurrent=args.max_concurrent)


def incumbents(experiment: Path, trials: list[dict[str, Any]],
               draws: int) -> list[tuple[int, dict[str, Any]]]:
    """(cumulative trial-epochs, incumbent config) after each report, in time order."""
    config = {t["trial_id"]: t["config"] for t in trials}
    reports = []
    for folder in sorted(experiment.glob("trial_*")):
        found = trial_progress(folder)
        if found is None or "objective" not in found[0]:
            continue
        frame, start = found
        trial_id = re.sub(r"^trial_(\d+_)?", "", folder.name)  # tuner.trial_name
        reports += [(start + float(row.time_total_s), trial_id, int(row.epoch),
                     float(row.objective)) for row in frame.itertuples()]
    reports.sort()
    points, best, spent = [], (-math.inf, None), 0
    for _, trial_id, _, objective in reports:
        spent += draws
        if math.isfinite(objective) and objective > best[0]:
            best = (objective, trial_id)
        if best[1] is not None:
            points.append((spent, config[best[1]]))
    return points


def at_budget(points: list[tuple[int, dict[str, Any]]], budget: float) -> dict[str, Any]:
    """The incumbent after at most `budget` trial-epochs (the first one if none yet)."""
    within = [config for spent, config in points if spent <= budget]
    return within[-1] if within else points[0][1]


def run_seed(args: argparse.Namespace, seed: int, storage: str) -> dict[str, Any]:
    from tune.search import search

    out: dict[str, Any] = {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for label in SEARCHES:
        settings = settings_for(args, seed, label).replace(
            storage_path=storage, name=f"bench-quality-{label}-s{seed}-{stamp}")
        started = time.perf_counter()
        result = search(settings)
        summary = result["summary"]
        experiment = Path(storage) / settings.name
        points = incumbents(experiment, [t._asdict() for t in summary.trials],
                            args.split_draws)
        rerank_epochs = (len(summary.rerank.get("rows", [])) * args.rerank_draws
                         * args.epochs)
        out[label] = {"points": points, "trial_epochs": points[-1][0] if points else 0,
                      "returned": summary.returned_config, "rerank": summary.rerank,
                      "rerank_trial_epochs": rerank_epochs,
                      "split_seeds": settings.split_seeds,
                      "seconds": time.perf_counter() - started, "path": str(experiment)}
    return out


def score(args: argparse.Namespace, seed: int, configs: dict[str, dict[str, Any]],
          after: int) -> dict[str, float]:
    """Each config's mean test metric over --final-draws split seeds from `after` on."""
    from tune.search import fit_on_seeds

    settings = settings_for(args, seed, "tpe_asha")
    final = list(range(after, after + args.final_draws))
    runs = fit_on_seeds(settings, configs, final, with_test=True,
                        stage=f"split seed {seed}: incumbents on test")
    out = {}
    for label, per_seed in runs.items():
        values = [run["test_metric"] for run in per_seed if run]
        out[label] = statistics.fmean(values) if values else math.nan
    return out


def rows_for_seed(args: argparse.Namespace, seed: int, out: dict[str, Any]) -> list[dict]:
    """One row per budget: both incumbents' configs and test scores; (b)'s final one."""
    total = out["random_fifo"]["trial_epochs"]
    configs: dict[str, dict[str, Any]] = {}
    for fraction in BUDGETS:
        for label in SEARCHES:
            configs[f"{label}@{fraction}"] = at_budget(out[label]["points"],
                                                       float(fraction * total))
    configs["tpe_asha@returned"] = out["tpe_asha"]["returned"]
    # Test draws after every seed either search or the re-rank used.
    used = [s for label in SEARCHES for stage in ("search", "rerank")
            for s in out[label]["split_seeds"][stage]]
    tests = score(args, seed, configs, max(used) + 1)
    final_b = tests[f"random_fifo@{BUDGETS[-1]}"]
    rows = []
    for fraction in BUDGETS:
        a, b = tests[f"tpe_asha@{fraction}"], tests[f"random_fifo@{fraction}"]
        rows.append({"seed": seed, "budget": str(fraction),
                     "trial_epochs": float(fraction * total),
                     "a_config": configs[f"tpe_asha@{fraction}"], "a_test": a,
                     "b_config": configs[f"random_fifo@{fraction}"], "b_test": b,
                     "b_final_test": final_b})
    rows.append({"seed": seed, "budget": "returned",
                 "trial_epochs": out["tpe_asha"]["trial_epochs"],
                 "rerank_trial_epochs": out["tpe_asha"]["rerank_trial_epochs"],
                 "a_config": configs["tpe_asha@returned"],
                 "a_test": tests["tpe_asha@returned"], "b_config": configs["random_fifo@1"],
                 "b_test": final_b, "b_final_test": final_b})
    return rows


def paired(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from infoprompt.metrics import paired_difference

    out = {}
    for budget in [str(f) for f in BUDGETS] + ["returned"]:
        mine = [r for r in rows if r["budget"] == budget]
        out[budget] = {
            "a_minus_b": paired_difference([r["a_test"] for r in mine],
                                           [r["b_test"] for r in mine]),
            "a_minus_b_final": paired_difference([r["a_test"] for r in mine],
                                                 [r["b_final_test"] for r in mine])}
    return out


def plot(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [str(f) for f in BUDGETS]
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for key, style, name in (("a_test", "o-", SEARCHES["tpe_asha"]),
                             ("b_test", "s--", SEARCHES["random_fifo"])):
        for i, seed in enumerate(sorted({r["seed"] for r in rows})):
            values = [next(r[key] for r in rows if r["seed"] == seed and r["budget"] == b)
                      for b in budgets]
            axis.plot(range(len(budgets)), values, style, alpha=0.35, color=f"C{i}")
        means = [statistics.fmean(r[key] for r in rows if r["budget"] == b) for b in budgets]
        axis.plot(range(len(budgets)), means, style, color="black", linewidth=2,
                  label=f"{name}, mean over seeds")
    axis.set_xticks(range(len(budgets)), [f"{'all' if b == '1' else b} of (b)'s "
                                          "trial-epochs" for b in budgets], fontsize=8)
    axis.set(ylabel="test metric of the incumbent",
             title=f"{args.task} {args.shots}-shot: each search's incumbent on test, by budget\n"
                   "(thin: one split seed each; thick: the mean over split seeds)")
    axis.title.set_fontsize(10)
    axis.legend(fontsize=8)
    figure.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.plot, dpi=110)
    plt.close(figure)


def cell(p: dict[str, Any]) -> str:
    if p["n"] < 2:
        return f"{p['mean']:+.4f}" if p["n"] else "–"
    text = f"{p['mean']:+.4f} [{p['ci'][0]:+.4f}, {p['ci'][1]:+.4f}]"
    return f"**{text}**" if p["verdict"] != "no difference shown" else text


def markdown(rows: list[dict[str, Any]], summary: dict[str, Any], args: argparse.Namespace,
             wall: float) -> str:
    lines = ["| budget | (a) test, mean | (b) test, mean | (a) − (b), same budget | "
             "(a) − (b)'s final incumbent |", "|---|---|---|---|---|"]
    for budget, p in summary.items():
        mine = [r for r in rows if r["budget"] == budget]
        name = "(a) returned (re-ranked)" if budget == "returned" else \
            f"{'all' if budget == '1' else budget} of (b)'s trial-epochs"
        lines.append(f"| {name} | {statistics.fmean(r['a_test'] for r in mine):.4f} | "
                     f"{statistics.fmean(r['b_test'] for r in mine):.4f} | "
                     f"{cell(p['a_minus_b'])} | {cell(p['a_minus_b_final'])} |")
    third = summary[str(Fraction(1, 3))]["a_minus_b_final"]
    if third["n"] < 5:
        target = f"not measurable with {third['n']} seed(s) (needs at least 5)"
    else:
        target = "met" if third["ci"][0] >= -0.01 else "not met"
    try:
        plot_path = args.plot.resolve().relative_to(ROOT)
    except ValueError:
        plot_path = args.plot
    return "\n".join([
        "## Search quality: the incumbent's test score at fixed budgets "
        "(`bench/search_quality.py`)", "",
        f"{args.task.upper()} {args.shots}-shot, {args.model}; seeds "
        f"{', '.join(str(s) for s in args.seeds)} (seed s: split seeds from {SEED_STRIDE}·s "
        "on for its searches, then its re-rank's and its test draws); (a) TPE + ASHA, "
        f"{args.tpe_samples} trials, grace {args.grace_period}, "
        f"--split-draws {args.split_draws}, re-rank top {args.rerank_top} on "
        f"{args.rerank_draws} draws; (b) random + FIFO, {args.random_samples} trials; at most "
        f"{args.epochs} epochs a trial. Incumbents re-trained on {args.final_draws} unseen "
        "draw(s) and scored on test (GLUE dev); paired by seed, Student-t 95% CI, **bold** "
        "where it excludes 0.", "",
        *lines, "",
        f"Target (issue 17): (a) at 1/3 of (b)'s trial-epochs − (b)'s final incumbent, CI lower "
        f"bound ≥ −0.01 over ≥ 5 seeds: **{target}**.", "",
        f"![incumbent test score by budget]({plot_path})", "",
        provenance(wall),
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    import ray

    storage = args.storage_path or tempfile.mkdtemp(prefix="bench-quality-ray-")
    rows, searches = [], {}
    for seed in args.seeds:
        searches[seed] = run_seed(args, seed, storage)  # each search starts and stops Ray
        ray.init(include_dashboard=False, num_cpus=args.max_concurrent)
        try:
            rows += rows_for_seed(args, seed, searches[seed])
        finally:
            ray.shutdown()
    wall = time.perf_counter() - started
    summary = paired(rows)
    plot(rows, args)
    text = markdown(rows, summary, args, wall)
    print("\n" + text + "\n", flush=True)
    if not args.no_write:
        write_section(SECTION, text)
    figures = {"rows": rows, "paired": summary,
               "searches": {str(seed): {label: {k: v for k, v in out[label].items()
                                                if k != "points"} for label in SEARCHES}
                            for seed, out in searches.items()},
               "plot": str(args.plot), "wall_s": round(wall, 1)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=1, default=float))
    emit({"paired": summary, "rows": len(rows), "json": str(args.json),
          "plot": str(args.plot), "wall_s": round(wall, 1)})
    return figures


if __name__ == "__main__":
    main()
