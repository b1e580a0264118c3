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
paired by seed, at each budget and against (b)'s final incumbent, with 95% CIs. On the same test
draws the paper default and (a)'s raw best (its incumbent before the re-rank) are scored too:
returned − default is the "never worse than the default" check over independent searches, and
returned − raw best is what the re-rank changed.

Each finished split seed is saved to --json at once; a later run with the same settings skips
the seeds already there (--rerun runs them again), and rows of other tasks are kept, so SST-2
and CoLA share one file, one plot and one section of BENCHMARKS.md.

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
    parser.add_argument("--random-samples", type=int, default=12,
                        help="(b)'s trials; its trial-epochs set the budgets (default: 12)")
    parser.add_argument("--tpe-samples", type=int, default=30,
                        help="(a)'s trials, enough for ASHA to spend (b)'s budget "
                             "(default: 30)")
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
                        help="one row per task, seed and budget, and the paired summary; "
                             "seeds already there with the same settings are not run again")
    parser.add_argument("--rerun", action="store_true",
                        help="run the seeds already in --json again (replacing their rows)")
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
    """One row per budget: both incumbents' configs and test scores, (b)'s final one and the
    paper default's; the "returned" row also has (a)'s raw best (before the re-rank)."""
    from tune.space import paper_point

    total = out["random_fifo"]["trial_epochs"]
    configs: dict[str, dict[str, Any]] = {
        "default": paper_point(settings_for(args, seed, "tpe_asha").config)}
    for fraction in BUDGETS:
        for label in SEARCHES:
            configs[f"{label}@{fraction}"] = at_budget(out[label]["points"],
                                                       float(fraction * total))
    configs["tpe_asha@returned"] = out["tpe_asha"]["returned"]
    configs["tpe_asha@raw"] = out["tpe_asha"]["points"][-1][1]
    # Test draws after every seed either search or the re-rank used.
    used = [s for label in SEARCHES for stage in ("search", "rerank")
            for s in out[label]["split_seeds"][stage]]
    tests = score(args, seed, configs, max(used) + 1)
    final_b = tests[f"random_fifo@{BUDGETS[-1]}"]
    shared = {"task": args.task, "seed": seed, "b_final_test": final_b,
              "default_config": configs["default"], "default_test": tests["default"]}
    rows = []
    for fraction in BUDGETS:
        a, b = tests[f"tpe_asha@{fraction}"], tests[f"random_fifo@{fraction}"]
        rows.append({**shared, "budget": str(fraction),
                     "trial_epochs": float(fraction * total),
                     "a_config": configs[f"tpe_asha@{fraction}"], "a_test": a,
                     "b_config": configs[f"random_fifo@{fraction}"], "b_test": b})
    rows.append({**shared, "budget": "returned",
                 "trial_epochs": out["tpe_asha"]["trial_epochs"],
                 "rerank_trial_epochs": out["tpe_asha"]["rerank_trial_epochs"],
                 "a_config": configs["tpe_asha@returned"],
                 "a_test": tests["tpe_asha@returned"], "b_config": configs["random_fifo@1"],
                 "b_test": final_b, "a_raw_config": configs["tpe_asha@raw"],
                 "a_raw_test": tests["tpe_asha@raw"]})
    return rows


def paired(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One task's rows: per budget, (a) − (b) and (a) − (b)'s final incumbent; for the
    returned config also − the default and − (a)'s raw best, and the raw best − the default."""
    from infoprompt.metrics import paired_difference

    def column(mine: list[dict[str, Any]], key: str) -> list[float]:
        return [r[key] for r in mine]

    out = {}
    for budget in [str(f) for f in BUDGETS] + ["returned"]:
        mine = [r for r in rows if r["budget"] == budget]
        out[budget] = {
            "a_minus_b": paired_difference(column(mine, "a_test"), column(mine, "b_test")),
            "a_minus_b_final": paired_difference(column(mine, "a_test"),
                                                 column(mine, "b_final_test"))}
        if budget == "returned":
            out[budget] |= {
                "a_minus_default": paired_difference(column(mine, "a_test"),
                                                     column(mine, "default_test")),
                "a_minus_a_raw": paired_difference(column(mine, "a_test"),
                                                   column(mine, "a_raw_test")),
                "a_raw_minus_default": paired_difference(column(mine, "a_raw_test"),
                                                         column(mine, "default_test")),
                "b_final_minus_default": paired_difference(column(mine, "b_final_test"),
                                                           column(mine, "default_test"))}
    return out


SETTINGS = ("shots", "model", "epochs", "grace_period", "random_samples", "tpe_samples",
            "split_draws", "rerank_top", "rerank_draws", "final_draws")


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """What a task's rows depend on: a run with other values cannot add to them."""
    return {name: getattr(args, name) for name in SETTINGS}


def plot(figures: dict[str, Any], path: Path) -> None:
    """One panel per task: each search's incumbent on test by budget, per seed and mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [str(f) for f in BUDGETS]
    tasks = sorted(figures["tasks"])
    figure, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.2), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        rows = [r for r in figures["rows"] if r["task"] == task]
        for key, style, name in (("a_test", "o-", SEARCHES["tpe_asha"]),
                                 ("b_test", "s--", SEARCHES["random_fifo"])):
            for i, seed in enumerate(sorted({r["seed"] for r in rows})):
                values = [next(r[key] for r in rows if r["seed"] == seed and r["budget"] == b)
                          for b in budgets]
                axis.plot(range(len(budgets)), values, style, alpha=0.35, color=f"C{i}")
            means = [statistics.fmean(r[key] for r in rows if r["budget"] == b)
                     for b in budgets]
            axis.plot(range(len(budgets)), means, style, color="black", linewidth=2,
                      label=f"{name}, mean over seeds")
        default = statistics.fmean(r["default_test"] for r in rows if r["budget"] == "1")
        axis.axhline(default, color="grey", linestyle=":", label="paper default, mean")
        axis.set_xticks(range(len(budgets)), [f"{'all' if b == '1' else b} of (b)'s "
                                              "trial-epochs" for b in budgets], fontsize=8)
        shots = figures["tasks"][task]["settings"]["shots"]
        axis.set(ylabel=f"test {figures['tasks'][task]['metric']} "
                        "of the incumbent",
                 title=f"{task} {shots}-shot: each search's incumbent on test, by budget\n"
                       "(thin: one split seed each; thick: the mean over split seeds)")
        axis.title.set_fontsize(10)
        axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def cell(p: dict[str, Any]) -> str:
    if p["n"] < 2:
        return f"{p['mean']:+.4f}" if p["n"] else "–"
    text = f"{p['mean']:+.4f} [{p['ci'][0]:+.4f}, {p['ci'][1]:+.4f}]"
    return f"**{text}**" if p["verdict"] != "no difference shown" else text


def target_line(p: dict[str, Any], what: str) -> str:
    if p["n"] < 5:
        return f"{what}: **not measurable with {p['n']} seed(s) (needs at least 5)**"
    return f"{what}: {cell(p)}, **{'met' if p['ci'][0] >= -0.01 else 'not met'}**"


def task_markdown(task: str, rows: list[dict[str, Any]], summary: dict[str, Any],
                  settings: dict[str, Any]) -> list[str]:
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"### {task.upper()} {settings['shots']}-shot, {settings['model']}", "",
             f"Seeds {', '.join(str(s) for s in seeds)} (seed s: split seeds from "
             f"{SEED_STRIDE}·s on for its searches, then its re-rank's and its test draws); "
             f"(a) TPE + ASHA, {settings['tpe_samples']} trials, grace "
             f"{settings['grace_period']}, --split-draws {settings['split_draws']}, re-rank "
             f"top {settings['rerank_top']} on {settings['rerank_draws']} draws; (b) random + "
             f"FIFO, {settings['random_samples']} trials; at most {settings['epochs']} epochs a "
             f"trial. Incumbents re-trained on {settings['final_draws']} unseen draw(s) and "
             "scored on test (GLUE dev); paired by seed, Student-t 95% CI, **bold** where it "
             "excludes 0.", "",
             "| budget | (a) test, mean | (b) test, mean | (a) − (b), same budget | "
             "(a) − (b)'s final incumbent |", "|---|---|---|---|---|"]
    for budget, p in summary.items():
        mine = [r for r in rows if r["budget"] == budget]
        name = "(a) returned (re-ranked)" if budget == "returned" else \
            f"{'all' if budget == '1' else budget} of (b)'s trial-epochs"
        lines.append(f"| {name} | {statistics.fmean(r['a_test'] for r in mine):.4f} | "
                     f"{statistics.fmean(r['b_test'] for r in mine):.4f} | "
                     f"{cell(p['a_minus_b'])} | {cell(p['a_minus_b_final'])} |")
    returned = summary["returned"]
    mine = [r for r in rows if r["budget"] == "returned"]
    kept = sum(r["a_config"] == r["default_config"] for r in mine)
    lines += ["", "| against the paper default (test mean "
              f"{statistics.fmean(r['default_test'] for r in mine):.4f}) | paired difference |",
              "|---|---|",
              f"| (a) returned (re-ranked) − default | {cell(returned['a_minus_default'])} |",
              f"| (a) raw best (before the re-rank) − default | "
              f"{cell(returned['a_raw_minus_default'])} |",
              f"| (a) returned − (a) raw best: what the re-rank changed | "
              f"{cell(returned['a_minus_a_raw'])} |",
              f"| (b) final incumbent − default | {cell(returned['b_final_minus_default'])} |",
              "", f"The re-rank returned the default on {kept} of {len(mine)} seeds.", "",
              "Targets (issue 17):", "",
              "- " + target_line(summary[str(Fraction(1, 3))]["a_minus_b_final"],
                                 "(a) at 1/3 of (b)'s trial-epochs − (b)'s final incumbent, CI "
                                 "lower bound ≥ −0.01 over ≥ 5 seeds"),
              "- " + target_line(returned["a_minus_default"],
                                 "returned − default, CI lower bound ≥ −0.01 over ≥ 5 seeds")]
    return lines


def markdown(figures: dict[str, Any], plot_path: Path, wall: float) -> str:
    try:
        plot_path = plot_path.resolve().relative_to(ROOT)
    except ValueError:
        pass
    lines = ["## Search quality: the incumbent's test score at fixed budgets "
             "(`bench/search_quality.py`)", ""]
    for task in sorted(figures["tasks"]):
        lines += task_markdown(task, [r for r in figures["rows"] if r["task"] == task],
                               figures["tasks"][task]["paired"],
                               figures["tasks"][task]["settings"]) + [""]
    return "\n".join([*lines, f"![incumbent test score by budget]({plot_path})", "",
                      provenance(wall) + " (this run; rows of other tasks or seeds kept from "
                      "--json are from earlier runs)"])


def load_figures(args: argparse.Namespace) -> dict[str, Any]:
    """--json as it stands (nothing if absent), checked against this run's settings."""
    figures = {"rows": [], "tasks": {}, "searches": {}}
    if args.json.exists():
        figures = json.loads(args.json.read_text())
    before = figures["tasks"].get(args.task, {}).get("settings")
    if before is not None and before != settings_of(args):
        sys.exit(f"error: {args.json} holds {args.task} rows run with {before}, not "
                 f"{settings_of(args)}; pass the same flags or another --json")
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    import ray

    from infoprompt.tasks import get_task

    figures = load_figures(args)
    done = {r["seed"] for r in figures["rows"] if r["task"] == args.task}
    todo = [s for s in args.seeds if args.rerun or s not in done]
    if len(todo) < len(args.seeds):
        print(f"seeds {sorted(set(args.seeds) - set(todo))} of {args.task} are in {args.json} "
              "already: kept (--rerun runs them again)", flush=True)
    storage = args.storage_path or tempfile.mkdtemp(prefix="bench-quality-ray-")
    task = figures["tasks"].setdefault(args.task, {})
    task |= {"settings": settings_of(args), "metric": get_task(args.task).metric}
    for seed in todo:
        searches = run_seed(args, seed, storage)  # each search starts and stops Ray
        ray.init(include_dashboard=False, num_cpus=args.max_concurrent)
        try:
            rows = rows_for_seed(args, seed, searches)
        finally:
            ray.shutdown()
        figures["rows"] = [r for r in figures["rows"]
                           if (r["task"], r["seed"]) != (args.task, seed)] + rows
        figures["searches"][f"{args.task}/{seed}"] = {
            label: {k: v for k, v in out.items() if k != "points"}
            for label, out in searches.items()}
        task["paired"] = paired([r for r in figures["rows"] if r["task"] == args.task])
        args.json.parent.mkdir(parents=True, exist_ok=True)  # a finished seed is never lost
        args.json.write_text(json.dumps(figures, indent=1, default=float))
    wall = time.perf_counter() - started
    figures["plot"] = str(args.plot)
    if "paired" not in task:
        sys.exit(f"error: no {args.task} seed ran or was kept; pass --seeds")
    plot(figures, args.plot)
    text = markdown(figures, args.plot, wall)
    print("\n" + text + "\n", flush=True)
    if not args.no_write:
        write_section(SECTION, text)
    emit({"paired": task["paired"], "rows": len(figures["rows"]), "json": str(args.json),
          "plot": str(args.plot), "wall_s": round(wall, 1)})
    return figures


if __name__ == "__main__":
    main()
