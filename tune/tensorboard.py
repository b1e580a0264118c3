"""TensorBoard that shows the task first. Ray's logger writes every reported value under one
group, `ray/tune/`, its own bookkeeping (done, iterations_since_restore, …) among them, and
an HParams entry whose metrics are the last epoch's values. This subclass keeps all of that,
adds the method's scalars under their own groups (which TensorBoard sorts ahead of `ray`),
and gives the HParams tab one metric: the search's objective."""

from __future__ import annotations

from typing import Any

from ray.tune.logger import TBXLoggerCallback

__all__ = ["GROUPS", "OBJECTIVE_TAG", "TaskTensorBoard"]

# Reported key -> its TensorBoard group. What a trial reports but is not here (Ray's
# bookkeeping) stays under ray/tune/ only.
GROUPS = {
    "objective": "objective",
    **{name: "metric" for name in ("valid_metric", "valid_loglik", "valid_accuracy",
                                   "valid_mcc", "valid_f1", "valid_macro_f1",
                                   "valid_semeval_f1")},
    **{name: "loss" for name in ("loss", "loss_pred", "nce_rep", "nce_head", "kl")},
    **{name: "mi" for name in ("mi_rep", "mi_head")},
    **{name: "diagnostics" for name in ("nce_rep_shuffled", "nce_head_shuffled", "grad_pred",
                                        "grad_rep", "grad_head", "prompt_norm", "cmi_prompt")},
    **{name: "optim" for name in ("lr", "epoch_seconds")},
}
OBJECTIVE_TAG = "objective/objective"


class TaskTensorBoard(TBXLoggerCallback):
    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        super().log_trial_result(iteration, trial, result)
        writer = self._trial_writer[trial]
        step = result.get("epoch", iteration)
        for name, value in result.items():
            if name in GROUPS and isinstance(value, (int, float)):
                writer.add_scalar(f"{GROUPS[name]}/{name}", value, global_step=step)
        writer.flush()

    def _try_log_hparams(self, trial: Any, result: dict) -> None:
        # `result` is the last report under Ray's tags; the HParams metric is the objective.
        objective = result.get("ray/tune/objective")
        super()._try_log_hparams(trial, {} if objective is None else {OBJECTIVE_TAG: objective})
