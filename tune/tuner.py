"""build_tuner: OptunaSearch (TPE by default, paper defaults first) + ASHA (or FIFO) +
resources, in one place."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import warnings
from collections.abc import Iterator
from typing import Any

import optuna
import ray.tune
from ray.air.constants import TRAINING_ITERATION
from ray.tune import Callback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from infoprompt.errors import InfoPromptError
from infoprompt.store import Splits
from tune.settings import Sampler, Scheduler, SearchSettings
from tune.space import default_point, param_space
from tune.tensorboard_callback import TaskTensorBoard
from tune.trainable import trainable

__all__ = ["METRIC", "MODE", "AshaRungs", "MovedSearchGenerator", "StudySearch", "build_tuner",
           "make_sampler", "make_scheduler", "restore_tuner", "sampler_options", "trial_boxes",
           "trial_name"]

logger = logging.getLogger(__name__)
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


# Ray's trial id -> its Optuna trial number, filled by StudySearch.suggest just before Tune
# names the trial (in the driver, SearchGenerator.create_trial_if_possible).
_NUMBERS: dict[str, int] = {}


def trial_name(trial: Any) -> str:
    """One name per trial for the console, its folder, its TensorBoard run, results.md and
    the Optuna trial's `trial_name` attribute: the Optuna number (Tune's count without a
    study) and Ray's id, e.g. trial_003_8b3c37a1."""
    number = _NUMBERS.get(trial.trial_id)
    if number is None:  # Tune's tag: "<count from 1>_<config>"
        number = int(str(trial.experiment_tag).split("_")[0] or 1) - 1
    return _name(number, trial.trial_id)


def _name(number: int, trial_id: str) -> str:
    return f"trial_{number:03d}_{trial_id}"


class StudySearch(OptunaSearch):
    """Ray's OptunaSearch, for a study kept in a database (tune/study.py), that tells the
    study what ASHA decided and never pickles where the database is.

    - States: a trial ASHA stops is PRUNED (its value: its last epoch's), one that ran every
      epoch COMPLETE, one that errored FAIL. Tune hands the result on which a trial stops
      (ASHA's stop, or the last epoch) to `on_trial_complete` only; it is reported here as
      that epoch's intermediate value first, so the study's curves are whole. Ray's own
      OptunaSearch tells every stopped trial COMPLETE, one epoch short. Each trial carries
      its Ray trial id, folder and epochs run as user attributes.
    - The database: Ray pickles the searcher into tuner.pkl and searcher-state-*.pkl. Its
      storage and study are left out (unpickling an RDBStorage connects to, and writes, the
      file it names: an absolute path, the original of a moved or copied experiment); the
      search gives `study_url` (`bind`) before a resumed search restores.
    - Restore: the database is written at once, Tune's snapshot of the searcher only every
      few seconds, so after a killed driver the database can be ahead of the snapshot. A
      trial told finished after the snapshot is then re-run by Tune, and telling Optuna
      about it again would fail (UpdateFinishedTrialError); a trial asked for after it is
      never run. So on restore the searcher takes the database's word: the first kind count
      as completed here (Ray's OptunaSearch then ignores their results with a warning), the
      second are marked failed so that TPE's constant liar stops counting them as running.
    """

    def __init__(self, *, study_url: str, max_epochs: int, **kwargs: Any):
        self.study_url, self.max_epochs, self.resumed = study_url, max_epochs, False
        super().__init__(storage=optuna.storages.RDBStorage(study_url), **kwargs)

    def bind(self, study_url: str, max_epochs: int) -> None:
        """A restored searcher's database: where the experiment's study is now."""
        self.study_url, self.max_epochs, self.resumed = study_url, max_epochs, True

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(study_url=None, _storage=None, _ot_study=None,
                     _ot_trials={t: trial.number for t, trial in self._ot_trials.items()})
        return state

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__getstate__(), file)

    def _setup_study(self, mode: Any) -> None:
        self._storage = optuna.storages.RDBStorage(self.study_url)
        if self.resumed:  # the study has its trials, the paper default among them
            self._points_to_evaluate = []
        super()._setup_study(mode)

    def restore(self, checkpoint_path: str) -> None:
        url = self.study_url
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))
        self.study_url, self._storage = url, optuna.storages.RDBStorage(url)
        if not self._space:  # saved before Tune set the search space up: nothing asked yet
            return
        self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage,
                                           sampler=self._sampler,
                                           pruner=optuna.pruners.NopPruner())
        study_id = self._storage.get_study_id_from_name(self._study_name)
        numbers = {t: getattr(trial, "number", trial) for t, trial in self._ot_trials.items()}
        self._ot_trials = {
            t: optuna.Trial(self._ot_study,
                            self._storage.get_trial_id_from_study_id_trial_number(study_id, n))
            for t, n in numbers.items()}
        running = optuna.trial.TrialState.RUNNING
        states = {t.number: t.state for t in self._ot_study.get_trials(deepcopy=False)}
        self._completed_trials |= {t for t, n in numbers.items() if states[n].is_finished()}
        for number in sorted(set(states) - set(numbers.values())):
            if states[number] == running:
                self._ot_study.tell(number, state=optuna.trial.TrialState.FAIL)

    def suggest(self, trial_id: str) -> dict | str | None:
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:  # the trial's one name is also its folder's
            _NUMBERS[trial_id] = ot_trial.number
            name = _name(ot_trial.number, trial_id)
            ot_trial.set_user_attr("trial_name", name)
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            ot_trial.set_user_attr("folder", name)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        super().on_trial_result(trial_id, result)
        if trial_id not in self._completed_trials and "epoch" in result:
            self._ot_trials[trial_id].set_user_attr("epochs", int(result["epoch"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        value = (result or {}).get(self.metric)
        if error or value is None or trial_id in self._completed_trials or \
                trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        trial, epoch = self._ot_trials[trial_id], int(result.get("epoch", 0))
        with warnings.catch_warnings():  # the last epoch already reported (no ASHA stop)
            warnings.simplefilter("ignore", UserWarning)
            trial.report(value, result[TRAINING_ITERATION])
        trial.set_user_attr("epochs", epoch)
        finished = epoch >= self.max_epochs
        try:  # PRUNED: Optuna takes the last intermediate value as the trial's value
            self._ot_study.tell(trial, value if finished else None,
                                state=optuna.trial.TrialState.COMPLETE if finished
                                else optuna.trial.TrialState.PRUNED)
        except Exception as exc:  # noqa: BLE001 - as Ray's OptunaSearch: e.g. a NaN value
            logger.warning(exc)
        self._completed_trials.add(trial_id)


@contextlib.contextmanager
def trial_boxes(shown: bool) -> Iterator[None]:
    """Ray's console (verbose 1) prints a table of each trial's config when it starts and of
    its last result, every reported key, when it ends: dozens of rows a trial, which bury the
    progress table. Unless `shown` (--verbose 2) they are printed only at Ray's verbose 2,
    like its per-epoch results; Ray has no setting of its own for this."""
    from ray.tune.experimental.output import AirVerbosity, TuneReporterBase

    before = TuneReporterBase._start_end_verbosity
    if not shown:
        TuneReporterBase._start_end_verbosity = AirVerbosity.VERBOSE
    try:
        yield
    finally:
        TuneReporterBase._start_end_verbosity = before


def _trainable(settings: SearchSettings, draws: dict[int, Splits]) -> Any:
    # with_parameters puts the tables in the object store once; every trial maps them.
    with_data = ray.tune.with_parameters(trainable, base=settings.config,
                                         draws={seed: splits.without_test()
                                                for seed, splits in draws.items()},
                                         objective=settings.objective)
    return ray.tune.with_resources(with_data, {"cpu": settings.cpus_per_trial,
                                               "gpu": settings.gpus_per_trial})


def _loggers(settings: SearchSettings) -> list[Callback]:
    """Tune's CSV and JSON loggers and our TensorBoard, with Tune's automatic loggers off:
    its TensorBoard logger would log every value a second time (tune/tensorboard_callback).
    Tune reads the switch when the tuner runs, in this process."""
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    return [CSVLoggerCallback(), JsonLoggerCallback(), TaskTensorBoard(settings)]


def build_tuner(settings: SearchSettings, draws: dict[int, Splits], *, storage_path: str,
                name: str, max_concurrent: int,
                study_url: str | None = None) -> ray.tune.Tuner:
    """The search of docs/design.md over the split `draws` (seed -> splits, the same for
    every trial). `study_url`: the database of the Optuna study (tune/study.py), whose name
    is the experiment's."""
    cfg = settings.config
    first = default_point(cfg, settings.space)
    study = {"study_url": study_url, "max_epochs": cfg.epochs} if study_url else {}
    searcher = (StudySearch if study_url else OptunaSearch)(
        sampler=make_sampler(settings, max_concurrent),
        points_to_evaluate=[first] if first else None,
        study_name=settings.study_name or name, **study)
    scheduler = make_scheduler(settings)
    callbacks = _loggers(settings)
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
            trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=ray.tune.RunConfig(
            name=name, storage_path=storage_path, callbacks=callbacks,
            # A failed trial (a lost node, say) restarts from its last epoch's checkpoint.
            failure_config=ray.tune.FailureConfig(max_failures=settings.max_failures),
            # More than one: the experiment state that --resume reads is saved every
            # TUNE_GLOBAL_CHECKPOINT_S (set in search.py) and may still name an older
            # checkpoint when the driver dies (ray-project/ray#27790).
            checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=3),
            verbose=settings.verbose))


class MovedSearchGenerator(SearchGenerator):
    """Tune's SearchGenerator for a resumed search. Ray restores the generator's Experiment
    as it was saved, with the storage path the experiment was started in, and creates every
    new trial from it: after a resume of a moved or copied experiment those trials (their
    folders and checkpoints) would land in the original (ray/tune/search/search_generator.py,
    set_state; Tune moves only the restored trials, tune_controller._restore_trials). This
    one points the restored Experiment at where the experiment is now, as Tune does for the
    restored trials."""

    def bind(self, storage_path: str, name: str) -> None:
        self.storage_path, self.name = storage_path, name

    def set_state(self, state: dict) -> None:
        from ray.train._internal.storage import get_fs_and_path

        super().set_state(state)
        storage = self._experiment.storage
        storage.storage_filesystem, storage.storage_fs_path = get_fs_and_path(self.storage_path)
        storage.experiment_dir_name = self.name


def restore_tuner(storage_path: str, name: str, settings: SearchSettings,
                  draws: dict[int, Splits], *, study_url: str) -> ray.tune.Tuner:
    """Continue an interrupted search: finished trials are kept, unfinished ones resume, new
    ones are created where the experiment is now, and the study is the one in `study_url`
    (where the experiment's is now)."""
    path = f"{storage_path.rstrip('/')}/{name}"
    _loggers(settings)  # the callbacks themselves come back with the tuner's saved state
    tuner = ray.tune.Tuner.restore(path, _trainable(settings, draws), resume_unfinished=True,
                                   resume_errored=False)
    # Tuner.restore takes no search algorithm: the one unpickled from tuner.pkl is wrapped
    # and bound here, before fit() restores its state (Ray keeps it in the tune config).
    config = tuner._local_tuner._tune_config
    generator = config.search_alg
    if not isinstance(generator, MovedSearchGenerator):  # a first resume
        limited = (ConcurrencyLimiter(generator, max_concurrent=config.max_concurrent_trials)
                   if config.max_concurrent_trials else generator)
        generator = config.search_alg = MovedSearchGenerator(limited)
        config.max_concurrent_trials = None  # in the limiter now, as Tune would have put it
    searcher = generator.searcher
    while not isinstance(searcher, StudySearch) and hasattr(searcher, "searcher"):
        searcher = searcher.searcher
    if not isinstance(searcher, StudySearch):
        raise InfoPromptError(f"--resume: {path} was not saved by this version's search "
                              f"(its searcher is {type(searcher).__name__}); start a new one")
    generator.bind(storage_path, name)
    searcher.bind(study_url, settings.config.epochs)
    return tuner
