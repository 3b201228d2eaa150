"""What produced a result: the versions and CPU kernels recorded in results.json."""

from __future__ import annotations

import platform

import numpy as np
import torch

import fedmoe


def versions(**extra: str) -> dict[str, str]:
    """fedmoe's, Python's, torch's and numpy's versions, then ``extra`` (e.g. ``flwr=...``),
    then the CPU kernels torch chose: they follow the instruction set, and their rounding
    differs, so identical results hold only on CPUs with the same capability."""
    return {
        "fedmoe": fedmoe.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        **extra,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
