"""TensorBoard for a search (not tune/tensorboard.py: run as a script, search.py would import
it as `tensorboard`): each trial's scalars under the tags a single run writes
(infoprompt/scalars.py: the objective's group sorts first), each value once, and an HParams
table that says what it shows.

Ray's own TBXLoggerCallback logs every reported value again under `ray/tune/`, its
bookkeeping (done, iterations_since_restore, …) among them; this subclass replaces its
logging rather than adding to it (Tune adds no logger of that kind when one is given).
"""

from __future__ import annotations

from typing import Any

from ray.tune.logger import TBXLoggerCallback
from ray.tune.result import AUTO_RESULT_KEYS, DEFAULT_EXPERIMENT_INFO_KEYS

from infoprompt.scalars import OBJECTIVE_TAG, scalars
from infoprompt.tasks import get_task
from tune.settings import SearchSettings
from tune.space import Range, searched_fields

__all__ = ["OBJECTIVE_TAG", "STATUSES", "TaskTensorBoard"]

STATUSES = ("completed", "stopped early", "error")
# What Tune adds to each report: its bookkeeping, not the trial's values.
TUNE_KEYS = {*AUTO_RESULT_KEYS, *DEFAULT_EXPERIMENT_INFO_KEYS, "done", "should_checkpoint"}


class TaskTensorBoard(TBXLoggerCallback):
    def __init__(self, settings: SearchSettings):
        super().__init__()
        from torch.utils.tensorboard import SummaryWriter  # tensorboard's own protos

        self._summary_writer_cls = SummaryWriter
        self.settings = settings
        self.epochs: dict[Any, int] = {}

    def log_trial_start(self, trial: Any) -> None:
        super().log_trial_start(trial)
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
            values = {**self._fixed(), **{k: v for k, v in trial.evaluated_params.items()},
                      "epochs run": epochs, "status": status}
            writer = self._trial_writer[trial]
            writer.file_writer.add_summary(hp.hparams_pb(values, trial_id=str(trial)))
            writer.close()
            del self._trial_writer[trial]

    def _fixed(self) -> dict[str, str]:
        cfg = self.settings.config
        return {"task": cfg.task, "method": cfg.method.value}

    def _experiment(self) -> Any:
        """The HParams tab's columns: the searched fields with their domains (a choice is
        discrete), the task and method, epochs run and status; its one metric, the
        objective, with its definition."""
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
        columns += [hp.HParam("epochs run", hp.IntInterval(0, cfg.epochs),
                              description=f"epochs the trial trained (ASHA may stop it "
                                          f"before {cfg.epochs})"),
                    hp.HParam("status", hp.Discrete(list(STATUSES)))]
        metric = get_task(cfg.task).metric
        objective = self.settings.objective
        shown = f"objective ({objective.value}, valid {metric})"
        return hp.hparams_config_pb(hparams=columns, metrics=[hp.Metric(
            OBJECTIVE_TAG, display_name=shown,
            description=f"what the search ranks trials by: {objective.definition} (valid "
                        f"{metric}, after the trial's last epoch)")])


def _shown(entry: Any) -> str:
    if isinstance(entry, Range):
        return f"log-uniform in [{entry.low:g}, {entry.high:g}]"
    return "one of " + ", ".join(str(getattr(v, "value", v)) for v in entry.options)
