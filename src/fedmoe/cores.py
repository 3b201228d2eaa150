"""How many CPU cores this process may use, and how many of them are free now.

Torch's default is one thread per core whether or not other work holds those cores; two
processes that each spin two OpenMP threads on two cores can run many times slower than
one. The command line therefore sizes its threads and worker processes from the cores
that are actually free: the cores this process may run on (its affinity mask) less the
time other processes kept them busy over a short sample of ``/proc/stat``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

#: Fields of a ``/proc/stat`` cpu line that count as idle (idle, iowait).
_IDLE = (3, 4)


def allowed() -> list[int]:
    """The cores this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _sample(cores: list[int]) -> dict[int, tuple[int, int]] | None:
    """Per core: (busy, total) jiffies so far; ``None`` without ``/proc/stat``."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}": c for c in cores}
    out = {}
    for line in lines:
        name, *fields = line.split()
        if name in wanted:
            values = [int(v) for v in fields[:8]]
            idle = sum(values[i] for i in _IDLE)
            out[wanted[name]] = (sum(values) - idle, sum(values))
    return out


def busy(seconds: float = 0.2) -> float:
    """Cores' worth of time other processes used over ``seconds`` (this process idles
    while it samples); 0.0 where that cannot be measured."""
    cores = allowed()
    before = _sample(cores)
    if not before:
        return 0.0
    time.sleep(seconds)
    after = _sample(cores) or {}
    used = 0.0
    for core, (b0, t0) in before.items():
        b1, t1 = after.get(core, (b0, t0))
        if t1 > t0:
            used += (b1 - b0) / (t1 - t0)
    return used


def free(seconds: float = 0.2) -> int:
    """Cores free for this process now: at least 1, at most :func:`allowed`'s count."""
    n = len(allowed())
    return max(1, min(n, round(n - busy(seconds))))
