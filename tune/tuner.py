"""build_tuner: OptunaSearch (TPE, paper defaults first) + ASHA + resources, in one place."""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from infoprompt.config import InfoPromptConfig
from infoprompt.store import Splits
from tune.space import Range, default_point, param_space
from tune.trainable import trainable

__all__ = ["METRIC", "MODE", "build_tuner", "restore_tuner"]

METRIC, MODE = "valid_metric", "max"


def _trainable(base: InfoPromptConfig, splits: Splits, *, cv_folds: int, cpus_per_trial: float,
               gpus_per_trial: float) -> Any:
    # with_parameters puts the tables in the object store once; every trial maps them.
    with_data = tune.with_parameters(trainable, base=base, splits=splits.without_test(),
                                     cv_folds=cv_folds)
    return tune.with_resources(with_data, {"cpu": cpus_per_trial, "gpu": gpus_per_trial})


def build_tuner(base: InfoPromptConfig, splits: Splits, *, space: dict[str, Range],
                num_samples: int, grace_period: int, reduction_factor: float,
                max_concurrent: int, cpus_per_trial: float, gpus_per_trial: float, seed: int,
                storage_path: str, name: str, cv_folds: int = 1, max_failures: int = 2,
                searcher: Any = None, scheduler: Any = None) -> tune.Tuner:
    """The search of DESIGN.md; `searcher` and `scheduler` replace TPE and ASHA (benchmarks)."""
    first = default_point(base.method, space)
    searcher = searcher or OptunaSearch(seed=seed, points_to_evaluate=[first] if first else None)
    scheduler = scheduler or ASHAScheduler(time_attr="epoch", max_t=base.epochs,
                                           grace_period=grace_period,
                                           reduction_factor=reduction_factor)
    return tune.Tuner(
        _trainable(base, splits, cv_folds=cv_folds, cpus_per_trial=cpus_per_trial,
                   gpus_per_trial=gpus_per_trial),
        param_space=param_space(base.method, space),
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=searcher,
                                    scheduler=scheduler, num_samples=num_samples,
                                    max_concurrent_trials=max_concurrent,
                                    # Same resources for every trial: keep the worker
                                    # process (torch, transformers already imported).
                                    reuse_actors=True,
                                    trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path,
            # A failed trial (a lost node, say) restarts from its last epoch's checkpoint.
            failure_config=tune.FailureConfig(max_failures=max_failures),
            # More than one: the experiment state that --resume reads is saved every
            # TUNE_GLOBAL_CHECKPOINT_S (set in search.py) and may still name an older
            # checkpoint when the driver dies (ray-project/ray#27790).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
            verbose=1))


def restore_tuner(path: str, base: InfoPromptConfig, splits: Splits, *, cv_folds: int,
                  cpus_per_trial: float, gpus_per_trial: float) -> tune.Tuner:
    """Continue an interrupted search: finished trials are kept, unfinished ones resume."""
    return tune.Tuner.restore(path, _trainable(base, splits, cv_folds=cv_folds,
                                               cpus_per_trial=cpus_per_trial,
                                               gpus_per_trial=gpus_per_trial),
                              resume_unfinished=True, resume_errored=False)
