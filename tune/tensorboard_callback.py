"""TensorBoard for a search (not tune/tensorboard.py: run as a script, search.py would import
it as `tensorboard`): each trial's scalars under the tags a single run writes
(infoprompt/scalars.py: the objective's group sorts first), each value once, and an HParams
table that says what it shows.

Ray's own TBXLoggerCallback logs every reported value under `ray/tune/`, its bookkeeping
(done, iterations_since_restore, …) among them, and its presence makes Ray print a
TensorBoard command for its local staging folder. tuner.py turns Tune's automatic loggers
off and gives this one with Tune's CSV and JSON loggers instead.
"""

from __future__ import annotations

from typing import Any

from ray.tune.logger import LoggerCallback
from ray.tune.result import AUTO_RESULT_KEYS, DEFAULT_EXPERIMENT_INFO_KEYS

from infoprompt.scalars import OBJECTIVE_TAG, scalars
from infoprompt.tasks import get_task
from tune.plots import objective_label
from tune.settings import SearchSettings
from tune.space import Range, searched_fields

__all__ = ["EPOCHS_TAG", "OBJECTIVE_TAG", "STATUSES", "TaskTensorBoard"]

STATUSES = ("completed", "stopped early", "error")
EPOCHS_TAG = "7_trial/epochs_run"  # one point per trial, at its end: an HParams metric
# What Tune adds to each report: its bookkeeping, not the trial's values.
TUNE_KEYS = {*AUTO_RESULT_KEYS, *DEFAULT_EXPERIMENT_INFO_KEYS, "done", "should_checkpoint"}


class TaskTensorBoard(LoggerCallback):
    _SAVED_FILE_TEMPLATES = ["events.out.tfevents.*"]  # synced with the trial's folder

    def __init__(self, settings: SearchSettings):
        self.settings = settings
        self._trial_writer: dict[Any, Any] = {}
        self.epochs: dict[Any, int] = {}

    def log_trial_start(self, trial: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter  # tensorboard's own protos

        if trial in self._trial_writer:  # a restarted trial
            self._trial_writer[trial].close()
        trial.init_local_path()
        self._trial_writer[trial] = SummaryWriter(trial.local_path, flush_secs=30)
        self._trial_writer[trial].file_writer.add_summary(self._experiment())

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if trial not in self._trial_writer:
            self.log_trial_start(trial)
        writer = self._trial_writer[trial]
        step = result.get("epoch", iteration)
        self.epochs[trial] = int(step)
        own = {k: v for k, v in result.items() if k not in TUNE_KEYS}
        for tag, value in scalars(own).items():
            writer.add_scalar(tag, value, global_step=step)
        writer.flush()

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        if trial in self._trial_writer:
            from tensorboard.plugins.hparams import summary_v2 as hp

            epochs = self.epochs.get(trial, 0)
            status = ("error" if failed else "completed"
                      if epochs >= self.settings.config.epochs else "stopped early")
            values = {**self._fixed(), **dict(trial.evaluated_params), "Status": status}
            writer = self._trial_writer[trial]
            writer.add_scalar(EPOCHS_TAG, epochs, global_step=epochs)
            writer.file_writer.add_summary(hp.hparams_pb(values, trial_id=str(trial)))
            writer.close()
            del self._trial_writer[trial]

    def _fixed(self) -> dict[str, str]:
        cfg = self.settings.config
        return {"task": cfg.task, "method": cfg.method.value}

    def _experiment(self) -> Any:
        """The HParams tab's columns: the searched fields with their domains (a choice is
        discrete), the task and method, epochs run and status; its one metric, the
        objective, with its definition, and the epochs run. TensorBoard shows the first five
        hyperparameter columns by name (upper case first) and hides the rest until ticked, but
        every metric: Status is capitalised to come first, the epochs run are a metric, and
        the objective's name carries the task and method, which never differ within one
        search (their own columns then come last)."""
        from tensorboard.plugins.hparams import summary_v2 as hp

        cfg, space = self.settings.config, self.settings.space
        columns = [hp.HParam(name, hp.Discrete([value]))
                   for name, value in self._fixed().items()]
        for name in searched_fields(cfg, space):
            entry = space[name]
            domain = (hp.RealInterval(float(entry.low), float(entry.high))
                      if isinstance(entry, Range)
                      else hp.Discrete([getattr(v, "value", v) for v in entry.options]))
            columns.append(hp.HParam(name, domain, description=f"searched: {_shown(entry)}"))
        columns.append(hp.HParam("Status", hp.Discrete(list(STATUSES))))
        metric = get_task(cfg.task).metric
        objective = self.settings.objective
        shown = (f"objective: {objective_label(objective.value, metric)} – {cfg.task}, "
                 f"{cfg.method.value}")
        return hp.hparams_config_pb(hparams=columns, metrics=[
            hp.Metric(OBJECTIVE_TAG, display_name=shown,
                      description=f"what the search ranks trials by: {objective.definition} "
                                  f"(valid {metric}, after the trial's last epoch)"),
            hp.Metric(EPOCHS_TAG, display_name="epochs run",
                      description=f"epochs the trial trained (ASHA may stop it before "
                                  f"{cfg.epochs})")])


def _shown(entry: Any) -> str:
    if isinstance(entry, Range):
        return f"log-uniform in [{entry.low:g}, {entry.high:g}]"
    return "one of " + ", ".join(str(getattr(v, "value", v)) for v in entry.options)
