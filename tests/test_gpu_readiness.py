"""What a GPU run relies on, checked on CPU: the step loop never reads a tensor back to the
host (on CUDA each read waits for the device), the critics score in fp32 under bf16
autocast, and a checkpoint has a slot for the CUDA generator. tests/test_cuda.py checks
the same on a GPU."""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import pytest
import torch

from infoprompt.config import Critic
from infoprompt.model import PairCritic
from infoprompt.train import Training

INFOPROMPT = str(Path(__file__).resolve().parents[1] / "infoprompt")
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


@pytest.fixture
def host_reads(monkeypatch):
    """Every read of a tensor's value made from infoprompt/ code: (method, file:line) counts."""
    seen = collections.Counter()

    def recorded(name, method):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(INFOPROMPT):
                seen[name, f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}"] += 1
            return method(self, *args, **kwargs)
        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, recorded(name, getattr(torch.Tensor, name)))
    return seen


@pytest.mark.parametrize("changes", [
    {"method": "infoprompt"},  # paper estimator: noise and token negatives
    {"method": "infoprompt", "estimator": "in_batch", "bf16": True},
    {"method": "infoprompt", "diagnostics": True},  # shuffled terms, gradient norms
    {"method": "idpg"},
])
def test_a_training_step_never_reads_a_tensor_back(demo_store_16, torch_one_thread, changes,
                                                   host_reads):
    cfg, splits = demo_store_16
    training = Training(cfg.replace(epochs=2, **changes), splits.without_test())
    for start in (0, 8, 0):
        training.step(training.batch(training.train_data, list(range(start, start + 8))))
    assert not host_reads, dict(host_reads)


def test_an_epoch_reads_its_sums_once_not_once_a_step(demo_store_16, torch_one_thread,
                                                      host_reads):
    cfg, splits = demo_store_16
    short, long = (Training(cfg.replace(epochs=1, batch_size=size), splits.without_test())
                   for size in (16, 4))  # 1 step vs 4 steps an epoch
    next(short.epochs())
    reads_short = sum(host_reads.values())
    host_reads.clear()
    next(long.epochs())
    assert sum(host_reads.values()) == reads_short, dict(host_reads)


@pytest.mark.parametrize("kind", list(Critic))
def test_critic_scores_are_fp32_under_bf16_autocast(kind):
    torch.manual_seed(0)
    critic = PairCritic(32, kind, temperature=0.1)
    with torch.no_grad():
        critic.weight.weight.add_(0.1 * torch.randn(32, 32))
    query, candidates = torch.randn(4, 32), torch.randn(4, 5, 32)
    expected = critic(query, candidates)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = critic(query, candidates)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected, rtol=0, atol=0)


def test_a_checkpoint_on_cpu_has_no_cuda_generator_and_resumes(demo_store_16):
    cfg, splits = demo_store_16
    training = Training(cfg.replace(epochs=2), splits.without_test())
    next(training.epochs())
    state = training.state(with_best=False)
    assert state["cuda_rng"] is None
    assert Training(cfg.replace(epochs=2), splits.without_test(), resume=state).epoch == 1
