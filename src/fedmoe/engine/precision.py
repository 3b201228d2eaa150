"""bf16 mixed precision (``dtype = "bf16-mixed"``): parameters, optimiser state, losses
and log-probabilities in float32; matrix products and convolutions in bfloat16 under
:func:`torch.autocast`.

Opt-in, and only where the hardware computes bfloat16 natively: a CPU with the
``avx512_bf16`` or ``amx_bf16`` instructions (``lscpu`` flags), or a CUDA GPU that
supports it. Elsewhere bfloat16 is emulated and slower than float32, so it is refused
(:func:`unsupported`). Worker processes (:mod:`fedmoe.engine.parallel`) run under the
caller's setting.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch

#: CPU flags of native bfloat16 arithmetic.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def unsupported(device: torch.device) -> str | None:
    """Why bf16 mixed precision is refused on ``device`` (``None``: it is native)."""
    if device.type == "cpu":
        if cpu_flags() & BF16_CPU_FLAGS:
            return None
        return (
            "this CPU has no native bfloat16 (lscpu flags avx512_bf16 or amx_bf16): "
            "it would be emulated, slower than float32"
        )
    if device.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else "this GPU has no native bfloat16"
    return f"bf16-mixed runs on a CPU or a CUDA GPU, not on {device.type}"


@contextmanager
def mixed(enabled: bool, device: torch.device) -> Iterator[None]:
    """bf16 autocast on ``device`` inside the block when ``enabled``."""
    if not enabled:
        yield
        return
    with torch.autocast(device.type, dtype=torch.bfloat16):
        yield


def on_cpu() -> bool:
    """Whether this thread runs under CPU bf16 autocast (what a worker must repeat)."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
