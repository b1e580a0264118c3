"""On a CUDA GPU: a step matches the CPU step, bf16 autocast runs with fp32 critic scores,
the step loop never waits for the device, a resumed run continues the GPU's generator, a
process's memory is capped at its share, and the splits live on the device. Marked `cuda`:
without a GPU each test is skipped with that reason (tests/conftest.py); `bash
bench/gpu_check.sh` runs them.

Needs only what a bare GPU machine has (torch, transformers, pyarrow, pytest): no Ray, no
downloaded weights. The encoder is a random-init one of MiniLM's shape, built here
(bench/_encoders.py)."""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import pytest
import torch

from infoprompt.batching import SplitTensors, make_batch
from infoprompt.config import InfoPromptConfig
from infoprompt.gpu_memory import cap_gpu_memory, release_memory
from infoprompt.store import load_splits
from infoprompt.train import Training

pytestmark = pytest.mark.cuda

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def demo_store_16(tmp_path_factory):
    """(cfg, splits): demo, 16 shots, on a random-init encoder of MiniLM's shape."""
    sys.path.insert(0, str(ROOT / "bench"))
    from _encoders import build_encoder

    folder = tmp_path_factory.mktemp("encoder")
    build_encoder("minilm", folder)
    cfg = InfoPromptConfig(task="demo", shots=16, epochs=1, device="cpu", model=str(folder),
                           cache_dir=str(tmp_path_factory.mktemp("store")))
    return cfg, load_splits(cfg, log=lambda message: None)


def _runs(demo_store_16, **changes):
    cfg, splits = demo_store_16
    return cfg.replace(**changes), splits.without_test()


def test_a_training_step_on_cuda_matches_the_cpu_step(demo_store_16):
    # idpg draws no negatives: nothing in its step depends on the device's random generator.
    cfg, splits = _runs(demo_store_16, method="idpg", epochs=3, batch_size=8)
    rows = list(range(8))
    out = {}
    for device in ("cpu", "cuda"):
        training = Training(cfg.replace(device=device), splits)
        losses = [training.step(training.batch(training.train_data, rows))["loss"].item()
                  for _ in range(4)]  # the first step has lr 0 (warm-up): 3 updates
        out[device] = losses, {name: value.detach().cpu()
                               for name, value in training.model.trainable_state().items()}
    (cpu_losses, cpu_state), (cuda_losses, cuda_state) = out["cpu"], out["cuda"]
    assert cuda_losses == pytest.approx(cpu_losses, rel=1e-4, abs=1e-5)
    assert cuda_state.keys() == cpu_state.keys()
    for name in cpu_state:
        torch.testing.assert_close(cuda_state[name], cpu_state[name], rtol=1e-3, atol=1e-4)

    # InfoPrompt's prediction loss too (its NCE terms draw noise from each device's own
    # generator, which CPU and CUDA do not share).
    cfg = cfg.replace(method="infoprompt")
    first = {device: Training(cfg.replace(device=device), splits) for device in ("cpu", "cuda")}
    pred = {device: t.losses(t.batch(t.train_data, rows))["loss_pred"].item()
            for device, t in first.items()}
    assert pred["cuda"] == pytest.approx(pred["cpu"], rel=1e-4)


def test_bf16_autocast_on_cuda_runs_and_is_finite(demo_store_16):
    cfg, splits = _runs(demo_store_16, device="cuda", bf16=True, epochs=2)
    training = Training(cfg, splits)
    # CUDA keeps SDPA attention (eager is the CPU bf16 choice).
    assert training.model.encoder.config._attn_implementation != "eager"
    batch = training.batch(training.train_data, list(range(8)))
    with training.autocast():
        _, logits, _ = training.model(batch["input_ids"], batch["attention_mask"],
                                      batch["mask_pos"], batch["p_free"])
    assert logits.dtype == torch.bfloat16
    # The critics score in fp32 with autocast off: the same numbers as outside autocast.
    query, candidates = torch.randn(8, 384, device=CUDA), torch.randn(8, 3, 384, device=CUDA)
    with training.autocast():
        scores = training.model.critic_rep(query, candidates)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, training.model.critic_rep(query, candidates))
    history = list(training.epochs())
    assert len(history) == 2
    for record in history:
        for name in ("loss", "loss_pred", "nce_rep", "nce_head", "valid_metric", "prompt_norm"):
            assert math.isfinite(record[name]), (name, record)


def test_a_process_under_a_fractional_gpu_caps_its_memory():
    """A quarter of the GPU, less room for a CUDA context: allocating a third of the GPU
    fails, a twentieth does not; the trial's end hands the cache back."""
    total = torch.cuda.get_device_properties(CUDA).total_memory
    try:
        fraction = cap_gpu_memory(0.25, CUDA)
        assert 0.2 < fraction < 0.25
        small = torch.empty(total // 20, dtype=torch.uint8, device=CUDA)
        with pytest.raises(torch.cuda.OutOfMemoryError):
            torch.empty(total // 3, dtype=torch.uint8, device=CUDA)
        release_memory(CUDA, [small])
        del small
        release_memory(CUDA, [])
        assert torch.cuda.memory_reserved() < total // 20
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)


def test_the_step_loop_never_waits_for_the_device(demo_store_16):
    """torch's sync debug mode warns at every operation that makes the host wait. Only the
    encoder's own forward may (transformers' SDPA mask check, `padding_mask.all()` in
    masking_utils.py, once per forward): the encoder floor in bench/step_time.py pays it
    too. None from infoprompt/, torch's optimizer or the gradient clipping."""
    cfg, splits = _runs(demo_store_16, device="cuda", epochs=2, diagnostics=False)
    training = Training(cfg, splits)
    rows = list(range(8))
    training.step(training.batch(training.train_data, rows))  # allocations, lazy inits
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                training.step(training.batch(training.train_data, rows))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    waits = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
             if "synchroniz" in str(w.message) and "/transformers/" not in w.filename]
    assert waits == []


def test_a_resumed_run_continues_the_gpus_generator(demo_store_16):
    cfg, splits = _runs(demo_store_16, device="cuda", epochs=3)
    first = Training(cfg, splits)
    next(first.epochs())
    state = first.state(with_best=False)
    expected = torch.randn(4, device=CUDA)  # what the uninterrupted run draws next
    torch.randn(100, device=CUDA)  # the generator moves on (another trial, a retry)
    Training(cfg, splits, resume=state)
    torch.testing.assert_close(torch.randn(4, device=CUDA), expected, rtol=0, atol=0)


def _host_to_device_copies(work) -> int:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        work()
        torch.cuda.synchronize()
    return sum(1 for event in prof.events() if "htod" in event.name.lower())


def test_splits_live_on_the_device_and_a_batch_needs_no_host_copy(demo_store_16):
    cfg, splits = _runs(demo_store_16, device="cuda")
    training = Training(cfg, splits)
    for split in (training.train_data, training.valid_data):
        for name in SplitTensors.TENSORS:
            assert getattr(split, name).is_cuda, name
    rows = [3, 1, 4, 1, 5, 9, 2, 6]
    batch = training.batch(training.train_data, rows)
    assert all(value.is_cuda for value in batch.values())
    host = make_batch(SplitTensors.from_table(splits.train), rows, n_prompts=cfg.n_prompts,
                      with_prompts=True)
    for name, value in host.items():
        assert torch.equal(batch[name].cpu(), value), name

    # Only the row numbers cross over; copying a host-built batch (as before) crosses 8 times.
    # The second count is the control: it shows the profiler sees the copies at all.
    assert _host_to_device_copies(lambda: training.batch(training.train_data, rows)) <= 1
    assert _host_to_device_copies(lambda: {k: v.to(CUDA) for k, v in host.items()}) >= 8
