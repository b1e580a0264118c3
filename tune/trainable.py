"""The Ray Tune trainable: a plain function around `infoprompt.train.Training`.

Data arrives through the object store (`ray.tune.with_parameters`); each epoch reports the
metrics and a checkpoint of the trainable state (never the frozen encoder), and a
restarted trial (node loss, `--resume`) continues from `ray.tune.get_checkpoint()`.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
import ray.tune
import torch

from infoprompt.config import InfoPromptConfig
from infoprompt.errors import InfoPromptError
from infoprompt.gpu_memory import cap_gpu_memory, gpu_memory_fraction, release_memory
from infoprompt.scalars import off_terms
from infoprompt.store import Splits
from infoprompt.train import Training, fit, resolve_device
from tune.experiment import is_uri
from tune.objective import Objective, objective_value

__all__ = ["cap_gpu_memory", "final_fit", "gpu_memory_fraction", "load_states",
           "release_memory", "trainable"]

STATE_FILE = "state.pt"
PER_RUN_ONLY = {"best_valid_metric", "best_epoch"}


def _mean(records: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    """One epoch's record averaged over the split draws (per-draw bests are not the best of the
    mean: those stay out)."""
    return {name: sum(r[name] for r in records) / len(records)
            for name in records[0] if name not in PER_RUN_ONLY}


def trainable(params: dict[str, Any], *, base: InfoPromptConfig, draws: dict[int, Splits],
              objective: Objective = Objective.BEST) -> None:
    cfg = base.replace(**params)
    # One INFO line per epoch and trial ("Checkpoint successfully created at …") would bury
    # Ray's progress table; each checkpoint is in the trial's folder anyway.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    resources = ray.tune.get_context().get_trial_resources().required_resources
    # One Ray CPU is one thread: more would oversubscribe the node's cores.
    torch.set_num_threads(max(1, int(resources.get("CPU", 1))))
    device = resolve_device(cfg.device)
    cap_gpu_memory(resources.get("GPU", 0), device)
    runs: list[Training] = []
    try:
        _train(cfg, draws, objective, runs)
    finally:  # also when ASHA stops the trial (report raises SystemExit) or it diverges
        release_memory(device, runs)


def _train(cfg: InfoPromptConfig, draws: dict[int, Splits], objective: Objective,
           runs: list[Training]) -> None:
    """The trial's work: one run per split draw, seeded by the draw's seed (the same draws
    and seeds for every trial, so trials are compared on paired data). `runs` is the
    caller's, so that it can drop them however this ends."""
    states = _restored_states()
    runs.extend(Training(cfg.replace(seed=seed), splits, resume=states[i] if states else None)
                for i, (seed, splits) in enumerate(sorted(draws.items())))
    del states  # loaded into the runs
    # Draws train in lockstep so that every report is the mean over all draws at one epoch.
    # A NaN/inf loss raises infoprompt.train.Diverged out of here, on purpose: Ray marks the
    # trial ERROR and tells Optuna error=True with no value (FAIL; a reported NaN or a result
    # without valid_metric would instead reach Optuna/ASHA or trip Tune's metric check).
    # Ray retries it --max-failures times from its last checkpoint; it diverges again within
    # that epoch (same seed, batches and lr), so each retry costs a worker start and at most
    # one epoch. Tune offers no per-exception retry policy, and a "diverged" note in the
    # trial's working folder did not survive between attempts, so none is attempted here.
    off = off_terms(cfg)  # constant zeros (the KL without a VIB, …): not reported
    for records in zip(*(run.epochs() for run in runs)):
        # Over the whole run, restored epochs included: a resumed trial ranks the same.
        history = [_mean(epoch) for epoch in zip(*(run.history for run in runs))]
        # The objective and the epoch first: Ray's progress table shows the first few keys.
        metrics = {"objective": objective_value(history, objective),
                   "epoch": records[0]["epoch"],
                   **{k: v for k, v in _mean(records).items() if k not in off | {"epoch"}}}
        # Which Ray node ran this epoch: on one machine every node shares node_ip.
        metrics["node_id"] = ray.get_runtime_context().get_node_id()
        with tempfile.TemporaryDirectory() as folder:
            # Trials are never scored on test, so the best epoch's copy stays out.
            torch.save([run.state(with_best=False) for run in runs], Path(folder) / STATE_FILE)
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(folder))


def _restored_states() -> list[dict] | None:
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return load_states(os.path.join(folder, STATE_FILE))


def load_states(path: str) -> list[dict]:
    """A trial's state.pt: tensors and plain data only. weights_only=True unpickles nothing
    else, so a tampered file cannot run code on --resume (Training.state() needs no more)."""
    try:
        # On the CPU first: a checkpoint written on a GPU must load on a node without one.
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        # torch's message opens with how to load it anyway (weights_only=False): the one
        # thing not to do with a file that may run code. Keep only what it found.
        found = [line.strip().rstrip(".") for line in str(error).splitlines()
                 if "GLOBAL" in line or "WeightsUnpickler" in line] or ["not a state file"]
        raise InfoPromptError(f"checkpoint {path} holds more than tensors and plain data, so "
                              "it could run code when loaded; refusing to load it (tampered "
                              f"with?): {found[0][:200]}. Delete the trial's checkpoint, or "
                              "the experiment, and search again") from None


def final_fit(cfg: InfoPromptConfig, splits: Splits, save_to: str | None = None
              ) -> dict[str, Any]:
    """One seed of the final evaluation, as a Ray task: train to the end, score test; with
    `save_to` (a folder or s3:// / gs:// URI), save the model there (infoprompt/saved.py)."""
    resources = ray.get_runtime_context().get_assigned_resources()
    torch.set_num_threads(max(1, int(resources.get("CPU", 1))))
    device = resolve_device(cfg.device)
    cap_gpu_memory(resources.get("GPU", 0), device)
    try:
        if save_to is None or not is_uri(save_to):
            return fit(cfg, splits, save_dir=save_to)
        with tempfile.TemporaryDirectory() as folder:  # written whole, then uploaded
            summary = fit(cfg, splits, save_dir=str(Path(folder) / "model"))
            pyarrow.fs.copy_files(str(Path(folder) / "model"), save_to)
            return {**summary, "saved_to": save_to}
    finally:  # Ray reuses the worker process for the next task
        release_memory(device, [])
