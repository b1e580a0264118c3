"""build_tuner: OptunaSearch (TPE by default, paper defaults first) + ASHA (or FIFO) +
resources, in one place."""

from __future__ import annotations

import warnings
from typing import Any

import optuna
import ray.tune
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from infoprompt.store import Splits
from tune.settings import Sampler, Scheduler, SearchSettings
from tune.space import default_point, param_space
from tune.tensorboard import TaskTensorBoard
from tune.trainable import trainable

__all__ = ["METRIC", "MODE", "AshaRungs", "StudySearch", "build_tuner", "make_sampler",
           "make_scheduler", "restore_tuner", "sampler_options"]

METRIC, MODE = "objective", "max"  # tune/objective.py: one number, end to end


SAMPLERS = {Sampler.TPE: optuna.samplers.TPESampler, Sampler.GP: optuna.samplers.GPSampler,
            Sampler.RANDOM: optuna.samplers.RandomSampler}


def sampler_options(settings: SearchSettings, max_concurrent: int) -> dict[str, Any]:
    """Seeded samplers that act within a small budget. TPE: a short random start scaled to
    the budget, multivariate (β, γ and K interact), and a constant liar so that concurrent
    trials do not all land on the same promising point. GP: the same random start."""
    options: dict[str, Any] = {"seed": settings.config.seed}
    if settings.sampler is Sampler.TPE:
        options.update(n_startup_trials=settings.startup_trials, multivariate=True,
                       constant_liar=max_concurrent > 1)
    elif settings.sampler is Sampler.GP:
        options.update(n_startup_trials=settings.startup_trials)
    return options


def make_sampler(settings: SearchSettings, max_concurrent: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():  # multivariate, constant_liar, GP are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SAMPLERS[settings.sampler](**sampler_options(settings, max_concurrent))


def make_scheduler(settings: SearchSettings) -> ASHAScheduler | FIFOScheduler:
    if settings.scheduler is Scheduler.FIFO:
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", max_t=settings.config.epochs,
                         grace_period=settings.grace_period,
                         reduction_factor=settings.reduction_factor)


class AshaRungs(Callback):
    """Carries ASHA's rung records through --resume. Tune saves and restores its callbacks'
    state with the experiment, but not the scheduler's (ray-project/ray#30838): without this
    a resumed search judges new trials against empty rungs. The callback and the scheduler
    are pickled together in the tuner's state, so the restored callback holds the restored
    scheduler."""

    def __init__(self, scheduler: ASHAScheduler):
        self.scheduler = scheduler

    def get_state(self) -> dict:
        return {"brackets": [[(milestone, dict(recorded)) for milestone, recorded in b._rungs]
                             for b in self.scheduler._brackets],
                "num_stopped": self.scheduler._num_stopped}

    def set_state(self, state: dict) -> None:
        for bracket, rungs in zip(self.scheduler._brackets, state["brackets"]):
            bracket._rungs = [(milestone, dict(recorded)) for milestone, recorded in rungs]
        self.scheduler._num_stopped = state["num_stopped"]


class StudySearch(OptunaSearch):
    """Ray's OptunaSearch, for a study kept in a database (tune/study.py). The database is
    written at once, Tune's snapshot of the searcher only every few seconds: after a killed
    driver the database can be ahead of the snapshot that --resume restores. A trial told
    finished after the snapshot is then re-run by Tune, and telling Optuna about it again
    would fail (UpdateFinishedTrialError); a trial asked for after it is never run. So on
    restore the searcher takes the database's word: the first kind count as completed here
    (Ray's OptunaSearch then ignores their results with a warning), the second are marked
    failed so that TPE's constant liar stops counting them as running."""

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        if self._ot_study is None:
            return
        running = optuna.trial.TrialState.RUNNING
        states = {t.number: t.state for t in self._ot_study.get_trials(deepcopy=False)}
        ours = {trial_id: trial.number for trial_id, trial in self._ot_trials.items()}
        self._completed_trials |= {trial_id for trial_id, number in ours.items()
                                   if states[number].is_finished()}
        for number in sorted(set(states) - set(ours.values())):
            if states[number] == running:
                self._ot_study.tell(number, state=optuna.trial.TrialState.FAIL)


def _trainable(settings: SearchSettings, draws: dict[int, Splits]) -> Any:
    # with_parameters puts the tables in the object store once; every trial maps them.
    with_data = ray.tune.with_parameters(trainable, base=settings.config,
                                         draws={seed: splits.without_test()
                                                for seed, splits in draws.items()},
                                         objective=settings.objective)
    return ray.tune.with_resources(with_data, {"cpu": settings.cpus_per_trial,
                                               "gpu": settings.gpus_per_trial})


def build_tuner(settings: SearchSettings, draws: dict[int, Splits], *, storage_path: str,
                name: str, max_concurrent: int,
                study_url: str | None = None) -> ray.tune.Tuner:
    """The search of docs/design.md over the split `draws` (seed -> splits, the same for
    every trial). `study_url`: the database of the Optuna study (tune/study.py), whose name
    is the experiment's."""
    cfg = settings.config
    first = default_point(cfg, settings.space)
    searcher = (StudySearch if study_url else OptunaSearch)(
        sampler=make_sampler(settings, max_concurrent),
        points_to_evaluate=[first] if first else None, study_name=name,
        storage=optuna.storages.RDBStorage(study_url) if study_url else None)
    scheduler = make_scheduler(settings)
    callbacks = [TaskTensorBoard()]
    if isinstance(scheduler, ASHAScheduler):
        callbacks.append(AshaRungs(scheduler))
    return ray.tune.Tuner(
        _trainable(settings, draws),
        param_space=param_space(cfg, settings.space),
        tune_config=ray.tune.TuneConfig(
            metric=METRIC, mode=MODE, search_alg=searcher, scheduler=scheduler,
            num_samples=settings.num_samples, max_concurrent_trials=max_concurrent,
            # Same resources for every trial: keep the worker process (torch, transformers
            # already imported).
            reuse_actors=True,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
        run_config=ray.tune.RunConfig(
            name=name, storage_path=storage_path, callbacks=callbacks,
            # A failed trial (a lost node, say) restarts from its last epoch's checkpoint.
            failure_config=ray.tune.FailureConfig(max_failures=settings.max_failures),
            # More than one: the experiment state that --resume reads is saved every
            # TUNE_GLOBAL_CHECKPOINT_S (set in search.py) and may still name an older
            # checkpoint when the driver dies (ray-project/ray#27790).
            checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=3),
            verbose=1))


def restore_tuner(path: str, settings: SearchSettings,
                  draws: dict[int, Splits]) -> ray.tune.Tuner:
    """Continue an interrupted search: finished trials are kept, unfinished ones resume."""
    return ray.tune.Tuner.restore(path, _trainable(settings, draws), resume_unfinished=True,
                                  resume_errored=False)
