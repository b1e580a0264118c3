"""python tune/search.py --task cola --shots 64 [...]: find InfoPrompt's best hyperparameters.

Optuna (TPE) proposes β, γ, K, lr and r; ASHA stops poor trials early on the valid
metric; the best configuration and the paper's default are then re-trained from scratch
on --final-seeds seeds and scored on the test split, which the search never saw.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from infoprompt.cli import ArgumentParser, add_config_arguments, config_from_args, guarded
from infoprompt.config import InfoPromptConfig
from infoprompt.errors import InfoPromptError
from tune.connection import check_cluster, connect, default_concurrency
from tune.experiment import experiment_path, load_settings, publish, resumed_args, save_settings
from tune.space import SPACE, Range, narrowed

SEARCHED = tuple(SPACE)  # set by the search, so not offered as plain --flags


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(  # bad flags: one `error:` line, exit 2
        prog="python tune/search.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    search = parser.add_argument_group("search")
    search.add_argument("--num-samples", type=int, default=16, help="trials (default: 16)")
    search.add_argument("--grace-period", type=int, default=2,
                        help="ASHA: epochs every trial runs before it can be stopped (default: 2)")
    search.add_argument("--reduction-factor", type=float, default=3,
                        help="ASHA: keep 1/this of the trials at each rung (default: 3)")
    search.add_argument("--cv-folds", type=int, default=1,
                        help="train each trial on N rotations of train+valid and report the "
                             "mean valid metric: less selection noise, N× the cost (default: 1)")
    search.add_argument("--final-seeds", type=int, default=5,
                        help="seeds on which the best and the default config are re-trained "
                             "and scored on test (default: 5; 0 skips)")
    search.add_argument("--beta-range", type=float, nargs=2, metavar=("LOW", "HIGH"))
    search.add_argument("--gamma-range", type=float, nargs=2, metavar=("LOW", "HIGH"))
    search.add_argument("--lr-range", type=float, nargs=2, metavar=("LOW", "HIGH"))
    search.add_argument("--k-choices", type=int, nargs="+", metavar="K")
    search.add_argument("--bottleneck-choices", type=int, nargs="+", metavar="R")

    ray_group = parser.add_argument_group("Ray")
    ray_group.add_argument("--address", default=None,
                           help="running Ray cluster to join ('auto' on a cluster node); "
                                "default: start Ray on this machine")
    ray_group.add_argument("--cpus-per-trial", type=float, default=1)
    ray_group.add_argument("--gpus-per-trial", type=float, default=0,
                           help="fractions share a GPU, e.g. 0.25 = four trials per GPU")
    ray_group.add_argument("--max-concurrent", type=int, default=None,
                           help="trials at once (default: as many as the resources allow)")
    ray_group.add_argument("--max-failures", type=int, default=2,
                           help="restarts of a failed trial from its last checkpoint")
    ray_group.add_argument("--storage-path", default="~/infoprompt_results",
                           help="local folder or s3:// / gs:// URI for checkpoints and "
                                "results; a multi-node cluster needs a shared one")
    ray_group.add_argument("--name", default=None,
                           help="experiment name (default: <task>-<method>-<shots>shot-<time>)")
    ray_group.add_argument("--resume", action="store_true",
                           help="continue the experiment --name (default: the latest one) "
                                "with the settings it was started with")
    add_config_arguments(parser, skip=SEARCHED)
    return parser.parse_args(argv)


def search_space(args: argparse.Namespace) -> dict[str, Range]:
    overrides = {}
    for name in ("beta", "gamma", "lr"):
        bounds = getattr(args, f"{name}_range")
        if bounds:
            overrides[name] = Range(*bounds)
    for name, flag in (("k_negatives", "k_choices"), ("bottleneck", "bottleneck_choices")):
        if getattr(args, flag):
            overrides[name] = Range(choices=tuple(getattr(args, flag)))
    return narrowed(overrides)


def check_args(args: argparse.Namespace) -> None:
    """Everything that can be refused before Ray starts."""
    for flag, value, low in (("--num-samples", args.num_samples, 1),
                             ("--grace-period", args.grace_period, 1),
                             ("--cv-folds", args.cv_folds, 1),
                             ("--final-seeds", args.final_seeds, 0),
                             ("--max-failures", args.max_failures, 0)):
        if value < low:
            raise InfoPromptError(f"{flag} must be >= {low}, got {value}")
    if args.reduction_factor <= 1:
        raise InfoPromptError(f"--reduction-factor must be > 1, got {args.reduction_factor:g}")
    if args.cpus_per_trial <= 0 or args.gpus_per_trial < 0:
        raise InfoPromptError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise InfoPromptError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    epochs = getattr(args, "epochs", InfoPromptConfig().epochs)
    if args.grace_period > epochs:
        raise InfoPromptError(f"--grace-period {args.grace_period} is more than --epochs "
                              f"{epochs}: ASHA cannot wait longer than a trial runs; lower it")
    if args.gpus_per_trial > 0 and not args.address:
        import torch  # a new local Ray sees the GPUs torch sees; starting it takes a while

        if torch.cuda.device_count() == 0:
            raise InfoPromptError(f"--gpus-per-trial {args.gpus_per_trial:g}, but this machine "
                                  "has no GPU; drop the flag to train on CPU")


def final_evaluation(cfg: InfoPromptConfig, configs: dict[str, dict[str, Any]],
                     args: argparse.Namespace) -> dict[str, Any]:
    """Re-train each config from scratch on seeds cfg.seed .. +final_seeds-1, test-scored,
    as Ray tasks with the trials' resources."""
    import ray

    from infoprompt.store import load_splits
    from tune.report import final_stats
    from tune.trainable import final_fit

    seeds = [cfg.seed + i for i in range(args.final_seeds)]
    splits = {seed: ray.put(load_splits(cfg.replace(seed=seed))) for seed in seeds}
    remote = ray.remote(final_fit).options(num_cpus=args.cpus_per_trial,
                                           num_gpus=args.gpus_per_trial)
    # Identical configs (the best may be the default) are trained once.
    distinct = {tuple(sorted(p.items())): p for p in configs.values()}
    jobs = {(key, seed): remote.remote(cfg.replace(**params, seed=seed), splits[seed])
            for key, params in distinct.items() for seed in seeds}
    print(f"final evaluation: {len(distinct)} configs x {len(seeds)} seeds, "
          f"{cfg.epochs} epochs each", flush=True)
    scores = {key: _test_metric(job) for key, job in jobs.items()}
    return {label: {"config": params, "seeds": seeds,
                    **final_stats([scores[tuple(sorted(params.items())), seed]
                                   for seed in seeds])}
            for label, params in configs.items()}


def _test_metric(job: Any) -> float:
    """A seed whose re-training diverges scores NaN (final_stats counts it apart)."""
    import ray

    from infoprompt.train import Diverged

    try:
        return ray.get(job)["test_metric"]
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, Diverged):
            print(f"warning: a final re-training diverged: {error.cause}", file=sys.stderr)
            return math.nan
        raise


def write_reports(summary: Any, storage: str, name: str) -> tuple[str, str]:
    """results.json, results.md and search.png into the experiment folder; returns where,
    and the Markdown."""
    from tune import report

    with tempfile.TemporaryDirectory() as folder:
        report.write_json(summary, Path(folder) / "results.json")
        report.write_markdown(summary, Path(folder) / "results.md")
        report.plot(summary, Path(folder) / "search.png")
        return publish(Path(folder), storage, name), (Path(folder) / "results.md").read_text()


@guarded
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    check_args(args)
    space = search_space(args)
    cfg = config_from_args(args)
    storage, name = experiment_path(args, cfg)
    path = f"{storage.rstrip('/')}/{name}"

    # Save the experiment state every second rather than every 10 s or more, so that a
    # killed driver leaves state that names checkpoints still on disk.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    import ray
    from ray import tune

    if args.resume:  # refused before Ray starts; the experiment's settings, not the defaults
        if not tune.Tuner.can_restore(path):
            raise InfoPromptError(f"--resume: no search state at {path}")
        args = resumed_args(args, load_settings(path), name, defaults=parse_args([]))
        check_args(args)
        space = search_space(args)
        cfg = config_from_args(args)

    from infoprompt.store import load_splits

    splits = load_splits(cfg, with_test=False)  # the search never reads test
    connect(args)
    try:
        return _search(args, cfg, space, splits, storage, name, path)
    finally:  # also for callers of main() in-process, and on errors
        ray.shutdown()


def _search(args: argparse.Namespace, cfg: InfoPromptConfig, space: dict[str, Range],
            splits: Any, storage: str, name: str, path: str) -> dict[str, Any]:
    import ray

    from tune import report
    from tune.space import default_point
    from tune.tuner import build_tuner, restore_tuner

    check_cluster(args, storage)
    options = {"cv_folds": args.cv_folds, "cpus_per_trial": args.cpus_per_trial,
               "gpus_per_trial": args.gpus_per_trial}
    if args.resume:
        print(f"resuming {path}", flush=True)
        tuner = restore_tuner(path, cfg, splits, **options)
    else:
        save_settings(args, storage, name)
        tuner = build_tuner(cfg, splits, space=space, num_samples=args.num_samples,
                            grace_period=args.grace_period,
                            reduction_factor=args.reduction_factor,
                            max_concurrent=args.max_concurrent or default_concurrency(args),
                            seed=cfg.seed,
                            storage_path=storage, name=name,
                            max_failures=args.max_failures, **options)
    started = time.perf_counter()
    grid = tuner.fit()
    rows = report.trial_rows(grid, cfg.epochs)
    summary = report.summarize(task=cfg.task, metric=splits.task.metric,
                               method=cfg.method.value, trials=rows, final={})
    # Written now and again after the final evaluation: a failure there loses no search.
    target, markdown = write_reports(summary, storage, name)
    configs = {"best": summary.best_config}
    default = default_point(cfg.method, SPACE)
    if default is not None:
        configs["default"] = default
    if args.final_seeds:
        summary = summary._replace(final=final_evaluation(cfg, configs, args))
        target, markdown = write_reports(summary, storage, name)
    ray.shutdown()
    print("\n" + markdown)
    print(f"{len(rows)} trials, {summary.stopped_early} stopped early by ASHA, "
          f"{time.perf_counter() - started:.0f}s. Results: {target}/results.md\n"
          f"TensorBoard: tensorboard --logdir {path}")
    return {"path": target, "summary": summary}


if __name__ == "__main__":
    main()
