"""--bf16 where the hardware has no native bf16 (infoprompt/precision.py): training falls back
to fp32 with one warning line; bench/step_time.py skips its bf16 rows and says why."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from infoprompt import precision
from infoprompt.train import Training, fit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_detection(monkeypatch):
    """Each test decides what the CPU has; the one-warning-per-process cache starts empty."""
    monkeypatch.delenv(precision.FORCE_ENV, raising=False)
    detect, warn = precision.cpu_bf16_feature, precision._warn  # the tests may replace them
    detect.cache_clear()
    warn.cache_clear()
    yield
    detect.cache_clear()
    warn.cache_clear()


def test_this_cpus_flags_are_read():
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    native = {"amx_bf16", "avx512_bf16", "bf16"} & flags
    assert (precision.cpu_bf16_feature() is not None) == bool(native)
    assert (precision.bf16_slow_reason(torch.device("cpu")) is None) == bool(native)


def test_bf16_on_a_cpu_without_it_trains_in_fp32_with_one_warning(demo_store_16, monkeypatch,
                                                                   capsys, torch_one_thread):
    cfg, splits = demo_store_16
    monkeypatch.setattr(precision, "cpu_bf16_feature", lambda: None)  # an AVX2-only CPU
    cfg = cfg.replace(bf16=True, epochs=1)
    summary = fit(cfg, splits)
    again = Training(cfg, splits)  # a second run in the process: no second warning

    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if "--bf16" in line]
    assert len(warnings) == 1, err
    assert warnings[0].startswith("warning: --bf16 ignored: this CPU (") and \
        "training in fp32" in warnings[0]
    assert summary["config"]["bf16"] is False  # metrics.json says what really ran
    assert again.cfg.bf16 is False and not again.autocast()._enabled  # noqa: SLF001
    assert again.model.encoder.config._attn_implementation != "eager"  # the fp32 attention


@pytest.mark.parametrize("why", ["native", "forced"])
def test_bf16_is_kept_where_native_or_forced(demo_store_16, monkeypatch, capsys, why):
    cfg, splits = demo_store_16
    if why == "native":
        monkeypatch.setattr(precision, "cpu_bf16_feature", lambda: "avx512_bf16")
    else:
        monkeypatch.setattr(precision, "cpu_bf16_feature", lambda: None)
        monkeypatch.setenv(precision.FORCE_ENV, "1")
    training = Training(cfg.replace(bf16=True), splits)
    assert training.cfg.bf16 is True and training.autocast()._enabled  # noqa: SLF001
    assert "--bf16" not in capsys.readouterr().err


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_step_time_bf16",
                                                  ROOT / "bench" / "step_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_step_time_bench_skips_bf16_rows_where_it_is_emulated(glue_dir, monkeypatch, capsys):
    bench = load_bench()
    monkeypatch.setattr(precision, "cpu_bf16_feature", lambda: None)
    result = bench.main(["--smoke", "--data-dir", str(glue_dir), "--threads", "1"])

    assert [r["dtype"] for r in result["step_time"]] == ["fp32"]
    assert result["bf16_over_fp32"] is None
    assert "no native bf16" in result["bf16_skipped"]
    assert not any("bf16" in t["target"] for t in result["targets"])
    assert "bf16 rows skipped: " in capsys.readouterr().err
    text = bench.markdown(result, "python bench/step_time.py --smoke")
    assert "| fp32 |" in text and "| bf16 |" not in text
    assert f"bf16 rows skipped: {result['bf16_skipped']}." in text


def test_a_gpu_without_native_bf16_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True:
                        including_emulation)  # a V100: bf16 only through emulation
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    reason = precision.bf16_slow_reason(torch.device("cuda", 0))
    assert reason == "Tesla V100 has no native bf16 (compute capability < 8)"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert precision.bf16_slow_reason(torch.device("cuda", 0)) is None
