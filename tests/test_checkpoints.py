"""A trial's checkpoint (tune/trainable.py, state.pt) loads with weights_only=True: everything
Training.state() saves round-trips, and a pickle that would run code is refused."""

from __future__ import annotations

import os

import pytest
import torch

from infoprompt.errors import InfoPromptError
from infoprompt.train import Training
from tune.trainable import load_states


class Payload:
    """What a tampered state.pt could hold: unpickling it runs os.mkdir (any callable)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    return a == b or (a != a and b != b)  # NaN


@pytest.mark.parametrize("method", ["infoprompt", "finetune"])  # finetune: two param groups
def test_a_saved_state_round_trips_with_weights_only(demo_store_16, torch_one_thread, tmp_path,
                                                     method):
    cfg, splits = demo_store_16
    cfg = cfg.replace(method=method, epochs=3, critic="cosine")
    training = Training(cfg, splits)
    next(training.epochs())
    states = [training.state(with_best=False), training.state()]  # as the trainable saves
    torch.save(states, tmp_path / "state.pt")

    loaded = load_states(str(tmp_path / "state.pt"))
    assert _equal(loaded, states)
    # config dict, optimizer state, schedule, history, best, rng: all of it restores.
    resumed = Training(cfg, splits, resume=loaded[0])
    assert resumed.epoch == 1 and resumed.history == training.history
    assert torch.equal(torch.get_rng_state(), states[0]["rng"])


def test_a_state_file_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "state.pt"
    torch.save([{"epoch": 1, "model": Payload(str(marker))}], path)

    with pytest.raises(InfoPromptError, match="holds more than tensors and plain data") as no:
        load_states(str(path))
    # What it found, and no advice to load it the unsafe way (torch's message opens with it).
    assert "GLOBAL posix.mkdir" in str(no.value) and "weights_only" not in str(no.value), no.value
    assert not marker.exists()
    # The payload is real: the old weights_only=False load ran it.
    torch.load(path, weights_only=False)
    assert marker.is_dir()
