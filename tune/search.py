"""python tune/search.py --task cola --shots 64 [...]: find InfoPrompt's best hyperparameters.

Optuna (TPE) proposes β, γ, K, lr and r; ASHA stops poor trials early on the valid
metric; the best configuration and the paper's default are then re-trained from scratch
on --final-seeds seeds and scored on the test split, which the search never saw.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from infoprompt.cli import add_config_arguments, config_from_args, guarded
from infoprompt.config import InfoPromptConfig
from infoprompt.errors import InfoPromptError
from tune.space import SPACE, Range, narrowed

SEARCHED = tuple(SPACE)  # set by the search, so not offered as plain --flags


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
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
                           help="continue the experiment --name (default: the latest one)")
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


def is_uri(path: str) -> bool:
    return "://" in path


def experiment_path(args: argparse.Namespace, cfg: InfoPromptConfig) -> tuple[str, str]:
    """(storage_path, name): a fresh name, or the experiment that --resume continues."""
    storage = args.storage_path if is_uri(args.storage_path) \
        else str(Path(args.storage_path).expanduser().resolve())
    prefix = f"{cfg.task}-{cfg.method.value}-{cfg.shots or 'all'}shot"
    if not args.resume:
        return storage, args.name or f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.name:
        return storage, args.name
    if is_uri(storage):
        raise InfoPromptError("--resume with a cloud --storage-path needs --name")
    earlier = sorted(p.name for p in Path(storage).glob(f"{prefix}-*") if p.is_dir())
    if not earlier:
        raise InfoPromptError(f"--resume: no experiment {prefix}-* under {storage}; "
                              "pass --name")
    return storage, earlier[-1]


def connect(args: argparse.Namespace) -> None:
    import ray

    try:
        if args.address:
            ray.init(address=args.address, log_to_driver=True)
        else:
            ray.init(include_dashboard=False)
    except Exception as error:  # noqa: BLE001 - ray raises ConnectionError, RuntimeError, …
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InfoPromptError(f"cannot connect to Ray at {args.address or 'a new local Ray'}: "
                              f"{reason[:200]}; check --address (host:port of the head, or "
                              "'auto' on a cluster node)") from None


def check_cluster(args: argparse.Namespace, storage: str) -> None:
    """Refuse, before any trial starts, what would only fail mid-search."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if args.gpus_per_trial > 0 and gpus == 0:
        if not args.address:
            raise InfoPromptError(f"--gpus-per-trial {args.gpus_per_trial:g}, but this machine "
                                  "has no GPU Ray can use; drop the flag to train on CPU")
        print("warning: the cluster has no GPU node yet; trials wait for the autoscaler",
              file=sys.stderr)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and not is_uri(storage) and not os.environ.get("INFOPROMPT_SHARED_FS"):
        raise InfoPromptError(
            f"this Ray cluster has {len(nodes)} nodes but --storage-path {storage} is local: "
            "checkpoints written on one node are invisible to the others; use s3://… or gs://… "
            "(or set INFOPROMPT_SHARED_FS=1 if that path is a shared file system)")


def default_concurrency(args: argparse.Namespace) -> int:
    """As many trials as the cluster's resources hold now (Ray would otherwise run one at a
    time under a searcher); an autoscaling cluster without GPU nodes yet gets 4."""
    import ray

    resources = ray.cluster_resources()
    fits = [int(resources.get("CPU", 1) // args.cpus_per_trial)]
    if args.gpus_per_trial:
        fits.append(int(resources.get("GPU", 0) // args.gpus_per_trial))
    return max(1, min(args.num_samples, min(fits) or 4))


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
    scores = {key: ray.get(job)["test_metric"] for key, job in jobs.items()}
    return {label: {"config": params, "seeds": seeds,
                    **final_stats([scores[tuple(sorted(params.items())), seed]
                                   for seed in seeds])}
            for label, params in configs.items()}


def publish(folder: Path, storage: str, name: str) -> str:
    """Copy the report files into the experiment folder (local or cloud)."""
    if is_uri(storage):
        import pyarrow.fs

        target = f"{storage.rstrip('/')}/{name}"
        pyarrow.fs.copy_files(str(folder), target)
        return target
    target = Path(storage) / name
    target.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        shutil.copy2(path, target / path.name)
    return str(target)


@guarded
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    check_args(args)
    space = search_space(args)
    cfg = config_from_args(args)
    storage, name = experiment_path(args, cfg)

    import ray
    from ray import tune

    from infoprompt.store import load_splits
    from tune import report
    from tune.space import default_point
    from tune.tuner import build_tuner, restore_tuner

    splits = load_splits(cfg, with_test=False)  # the search never reads test
    connect(args)
    check_cluster(args, storage)
    path = f"{storage.rstrip('/')}/{name}"
    options = {"cv_folds": args.cv_folds, "cpus_per_trial": args.cpus_per_trial,
               "gpus_per_trial": args.gpus_per_trial}
    if args.resume:
        if not tune.Tuner.can_restore(path):
            raise InfoPromptError(f"--resume: no search state at {path}")
        print(f"resuming {path}", flush=True)
        tuner = restore_tuner(path, cfg, splits, **options)
    else:
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
    configs = {"best": summary.best_config}
    default = default_point(cfg.method, SPACE)
    if default is not None:
        configs["default"] = default
    final = final_evaluation(cfg, configs, args) if args.final_seeds else {}
    summary = summary._replace(final=final)

    with tempfile.TemporaryDirectory() as folder:
        report.write_json(summary, Path(folder) / "results.json")
        report.write_markdown(summary, Path(folder) / "results.md")
        report.plot(summary, Path(folder) / "search.png")
        markdown = (Path(folder) / "results.md").read_text()
        target = publish(Path(folder), storage, name)
    ray.shutdown()
    print("\n" + markdown)
    print(f"{len(rows)} trials, {summary.stopped_early} stopped early by ASHA, "
          f"{time.perf_counter() - started:.0f}s. Results: {target}/results.md\n"
          f"TensorBoard: tensorboard --logdir {path}")
    return {"path": target, "summary": summary}


if __name__ == "__main__":
    main()
