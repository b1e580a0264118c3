"""Whether --bf16 pays on the device a run trains on. Decided here, once, for training
(`Training`) and for bench/step_time.py.

bf16 autocast is only fast where the hardware computes in bf16. A CPU without native bf16
(no AVX512-BF16 or AMX on x86, no BF16 extension on ARM) emulates it: on an AVX2-only AMD EPYC
a MiniLM forward+backward (batch 8 x 64, one thread) took 0.38 s in fp32 and 8.1 s under bf16
autocast, 21x slower. There --bf16 falls back to fp32 with a one-line warning rather than
refusing: the run's results do not depend on it, only its speed does.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["FORCE_ENV", "bf16_slow_reason", "cpu_bf16_feature", "cpu_name", "use_bf16"]

FORCE_ENV = "INFOPROMPT_FORCE_BF16"  # =1: keep bf16 wherever asked (measuring it, say)
CPU_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # x86 flags; "bf16" is ARM's (Features)


@lru_cache(maxsize=1)
def cpu_bf16_feature() -> str | None:
    """The CPU feature that computes bf16 natively (e.g. "avx512_bf16"), or None."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if re.match(r"(flags|Features)\s*:", line):
                flags.update(line.split(":", 1)[1].split())
    except OSError:  # not Linux: torch's own cpuinfo probe (x86 only)
        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        if probe is not None and probe():
            return "avx512_bf16"
    return next((flag for flag in CPU_FLAGS if flag in flags), None)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_slow_reason(device: torch.device) -> str | None:
    """Why bf16 autocast would be slower than fp32 on `device`, or None when it is native."""
    if os.environ.get(FORCE_ENV, "").strip() == "1":
        return None
    if device.type == "cpu" and cpu_bf16_feature() is None:
        return (f"this CPU ({cpu_name()}) has no native bf16 (no {', '.join(CPU_FLAGS[:2])}), "
                "where bf16 autocast is emulated and much slower than fp32 (21x for MiniLM on an "
                "AVX2-only EPYC)")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return f"{torch.cuda.get_device_name(device)} has no native bf16 (compute capability < 8)"
    return None


def use_bf16(device: torch.device) -> bool:
    """For a run that asked for --bf16: whether to keep it on `device`. Where it would be
    slower, say so once per process (on stderr) and train in fp32."""
    reason = bf16_slow_reason(device)
    if reason is not None:
        _warn(f"warning: --bf16 ignored: {reason}; training in fp32 (set {FORCE_ENV}=1 to "
              "keep bf16)")
    return reason is None


@lru_cache(maxsize=None)
def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
