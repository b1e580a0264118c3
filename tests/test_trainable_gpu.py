"""The trainable's GPU housekeeping, checked on CPU with torch.cuda mocked: the memory cap
under a fractional GPU, and the cleanup at the end of every trial (tests/test_cuda.py runs
the real thing on a GPU)."""

from __future__ import annotations

import gc
import types
import weakref

import pytest
import ray.tune
import torch

from infoprompt.config import InfoPromptConfig
from infoprompt.gpu_memory import CUDA_CONTEXT_BYTES
from tune import trainable as trainable_module
from tune.trainable import cap_gpu_memory, gpu_memory_fraction, release_memory, trainable

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


GIB = 2 ** 30


@pytest.mark.parametrize(("share", "device", "total", "fraction"), [
    # four trials on an 80 GiB GPU: each gets a quarter of what the four contexts leave
    (0.25, CUDA, 80 * GIB, 0.25 - 1 / 80),
    (0.5, torch.device("cuda:1"), 24 * GIB, 0.5 - 1 / 24),
    (0.25, CUDA, 2 * GIB, 0.125),  # a tiny GPU: never below half the share
    (1.0, CUDA, 80 * GIB, None),  # a whole GPU: no cap
    (2.0, CUDA, 80 * GIB, None),
    (0.0, CUDA, 80 * GIB, None),  # no GPU asked (device auto on a GPU node): nothing to share
    (0.25, CPU, 80 * GIB, None),  # --device cpu: torch.cuda is never touched
])
def test_memory_fraction_leaves_room_for_every_process_cuda_context(share, device, total,
                                                                     fraction):
    assert gpu_memory_fraction(share, device, total) == pytest.approx(fraction)
    if fraction is not None and fraction > share / 2:  # allocators + contexts fit the GPU
        assert (fraction * total + CUDA_CONTEXT_BYTES) / share <= total * 1.0001


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's memory calls, recorded instead of made."""
    calls: list[tuple] = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device=None: calls.append(("fraction", fraction, device)))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(("empty_cache",)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: types.SimpleNamespace(total_memory=80 * GIB))
    return calls


def test_the_cap_is_set_on_the_trials_device(fake_cuda):
    assert cap_gpu_memory(0.25, CUDA) == 0.25 - 1 / 80
    assert cap_gpu_memory(0.5, torch.device("cuda:1")) == 0.5 - 1 / 80
    assert cap_gpu_memory(1.0, CUDA) is None
    assert cap_gpu_memory(0.25, CPU) is None
    assert fake_cuda == [("fraction", 0.25 - 1 / 80, 0), ("fraction", 0.5 - 1 / 80, 1)]


def test_release_drops_the_runs_and_empties_the_cache_only_on_cuda(fake_cuda):
    held = [object()]
    release_memory(CPU, held)
    assert held == [] and fake_cuda == []
    release_memory(CUDA, held)
    assert fake_cuda == [("empty_cache",)]


class FakeTraining:
    """Stands in for infoprompt.train.Training: one epoch record, or an error."""
    instances: list[weakref.ref] = []
    error: BaseException | None = None

    def __init__(self, cfg, splits, *, resume=None):
        self.history: list[dict] = []
        FakeTraining.instances.append(weakref.ref(self))

    def epochs(self):
        if FakeTraining.error is not None:
            raise FakeTraining.error
        record = {"epoch": 1, "valid_metric": 0.5, "loss": 1.0}
        self.history.append(record)
        yield record

    def state(self, *, with_best: bool = True) -> dict:
        return {}


@pytest.fixture
def fake_trial(monkeypatch, fake_cuda):
    """The trainable in a pretend Ray trial holding 1 CPU and a quarter of a GPU."""
    resources = types.SimpleNamespace(required_resources={"CPU": 1, "GPU": 0.25})
    context = types.SimpleNamespace(get_trial_resources=lambda: resources)
    monkeypatch.setattr(ray.tune, "get_context", lambda: context)
    monkeypatch.setattr(ray, "get_runtime_context",
                        lambda: types.SimpleNamespace(get_node_id=lambda: "node"))
    monkeypatch.setattr(trainable_module, "_restored_states", lambda: None)
    monkeypatch.setattr(trainable_module, "resolve_device", lambda name: CUDA)
    monkeypatch.setattr(trainable_module, "Training", FakeTraining)
    monkeypatch.setattr(FakeTraining, "instances", [])
    monkeypatch.setattr(FakeTraining, "error", None)
    threads = torch.get_num_threads()
    yield fake_cuda
    torch.set_num_threads(threads)


def test_a_trial_caps_its_gpu_memory_and_cleans_up_when_training_raises(fake_trial):
    FakeTraining.error = RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        trainable({}, base=InfoPromptConfig(task="demo"), draws={0: None})
    assert fake_trial == [("fraction", 0.25 - 1 / 80, 0), ("empty_cache",)]


def test_a_trial_stopped_by_the_scheduler_frees_its_runs_before_emptying_the_cache(
        fake_trial, monkeypatch):
    alive_at_cleanup = []

    def empty_cache():
        gc.collect()
        alive_at_cleanup.append([ref() is not None for ref in FakeTraining.instances])

    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)

    def stop(metrics, checkpoint=None):  # what ray.tune.report does to a stopped trial
        assert metrics["epoch"] == 1 and metrics["objective"] == 0.5
        raise SystemExit(0)

    monkeypatch.setattr(ray.tune, "report", stop)
    with pytest.raises(SystemExit):
        trainable({}, base=InfoPromptConfig(task="demo"), draws={0: None})
    assert fake_trial == [("fraction", 0.25 - 1 / 80, 0)]
    assert alive_at_cleanup == [[False]]  # the run was gone when the cache was emptied
