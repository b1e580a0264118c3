"""On a CUDA GPU: a step matches the CPU step, bf16 autocast runs, a trial's memory is capped
at its share, and the splits live on the device. Marked `cuda`: without a GPU each test is
skipped with that reason (tests/conftest.py); `bash bench/gpu_check.sh` runs them."""

from __future__ import annotations

import math
import types

import pytest
import torch

from infoprompt.batching import SplitTensors, make_batch
from infoprompt.train import Training

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")


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
    history = list(training.epochs())
    assert len(history) == 2
    for record in history:
        for name in ("loss", "loss_pred", "nce_rep", "nce_head", "valid_metric", "prompt_norm"):
            assert math.isfinite(record[name]), (name, record)


def test_a_trial_under_a_fractional_gpu_caps_its_memory(monkeypatch):
    """The trainable, in a pretend trial holding a quarter of the GPU: allocating a third
    of the GPU fails inside it, a twentieth does not."""
    import ray.tune

    from infoprompt.config import InfoPromptConfig
    from tune import trainable as trainable_module

    total = torch.cuda.get_device_properties(CUDA).total_memory
    seen = {}

    class Probe:
        def __init__(self, cfg, splits, *, resume=None):
            if hasattr(torch.cuda, "get_per_process_memory_fraction"):
                seen["fraction"] = torch.cuda.get_per_process_memory_fraction(0)
            small = torch.empty(total // 20, dtype=torch.uint8, device=CUDA)
            del small
            try:
                torch.empty(total // 3, dtype=torch.uint8, device=CUDA)
                seen["third"] = "allocated"
            except torch.cuda.OutOfMemoryError:
                seen["third"] = "refused"
            raise RuntimeError("probe done")

    resources = types.SimpleNamespace(required_resources={"CPU": 1, "GPU": 0.25})
    monkeypatch.setattr(ray.tune, "get_context", lambda: types.SimpleNamespace(
        get_trial_resources=lambda: resources))
    monkeypatch.setattr(trainable_module, "_restored_states", lambda: None)
    monkeypatch.setattr(trainable_module, "Training", Probe)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(RuntimeError, match="probe done"):
            trainable_module.trainable({}, base=InfoPromptConfig(task="demo", device="cuda"),
                                       draws={0: None})
    finally:
        torch.set_num_threads(threads)
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
    assert seen["third"] == "refused"
    assert seen.get("fraction", 0.25) == pytest.approx(0.25)
    # The trial's end handed the cache back.
    assert torch.cuda.memory_reserved() < total // 20


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
