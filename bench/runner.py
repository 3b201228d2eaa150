"""The parent side: run one child process at a time and watch its memory.

Each child gets the same thread settings in its environment, runs in its own session
(so what it leaves behind can be cleaned up by process group) and is never run beside
another. Peak memory is the larger of the child's own ``ru_maxrss`` and the peak, sampled
every 50 ms, of the summed RSS of the child and all its descendants (Ray's processes for
Flower; shared pages are counted once per process, so this errs high).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.harness import MARKER

ROOT = Path(__file__).resolve().parent.parent
_PAGE = os.sysconf("SC_PAGE_SIZE")


def child_env(threads: int) -> dict[str, str]:
    """The environment of every child: same threads, no telemetry, repo importable."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)
    env.update(
        FLWR_TELEMETRY_ENABLED="0",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
        PFL_PYTORCH_DEVICE="cpu",
        PYTHONWARNINGS="ignore",
    )
    return env


def _proc_stats() -> Iterator[tuple[int, list[bytes]]]:
    """``(pid, fields)`` for every process: the fields of ``/proc/<pid>/stat`` after the
    command name (state, ppid, pgrp, ...)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        yield int(entry.name), stat[stat.rindex(b")") + 2 :].split()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for pid, fields in _proc_stats():
        tree.setdefault(int(fields[1]), []).append(pid)
    return tree


def tree_rss(pid: int) -> tuple[int, int]:
    """Summed RSS in bytes of ``pid`` and its descendants, and how many processes."""
    tree, todo, total, count = _children(), [pid], 0, 0
    while todo:
        p = todo.pop()
        todo.extend(tree.get(p, []))
        try:
            with open(f"/proc/{p}/statm", "rb") as f:
                total += int(f.read().split()[1]) * _PAGE
            count += 1
        except OSError:
            continue
    return total, count


@dataclass
class ChildResult:
    """What one child run gave: its parsed result line (``None`` if it printed none),
    the peak of its process tree's RSS, its wall time, and its output tail on failure."""

    command: list[str]
    record: dict[str, object] | None
    tree_peak_rss_mib: float
    max_processes: int
    wall_seconds: float
    timed_out: bool = False
    output_tail: str = ""
    not_run: str = ""

    @staticmethod
    def skipped(args: list[str], reason: str) -> ChildResult:
        """A job that was not started (``reason`` says why)."""
        return ChildResult([sys.executable, *args], None, 0.0, 0, 0.0, not_run=reason)


def run_child(args: list[str], threads: int, timeout: float) -> ChildResult:
    """Run ``python <args>`` from the repository root and wait for it."""
    command = [sys.executable, *args]
    start = time.perf_counter()
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=child_env(threads),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    peak, procs, stop = [0], [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            rss, n = tree_rss(proc.pid)
            peak[0], procs[0] = max(peak[0], rss), max(procs[0], n)
            stop.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc.pid)
        output, _ = proc.communicate()
    finally:
        stop.set()
        watcher.join()
        _kill_group(proc.pid)  # anything the child left running
    record = None
    for line in output.splitlines():
        if line.startswith(MARKER):
            record = json.loads(line[len(MARKER) :])
    return ChildResult(
        command=command,
        record=record,
        tree_peak_rss_mib=peak[0] / 2**20,
        max_processes=procs[0],
        wall_seconds=time.perf_counter() - start,
        timed_out=timed_out,
        output_tail="" if record else output[-3000:],
    )


def _group_alive(pgid: int) -> bool:
    return any(int(fields[2]) == pgid for _, fields in _proc_stats())


def _kill_group(pgid: int) -> None:
    """Kill what is left of the child's own process group (its session), if anything:
    a group id stays taken while a member lives, so a live group is still the child's."""
    if not _group_alive(pgid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_json(args: list[str], threads: int, timeout: float) -> dict[str, object]:
    """Run a child that prints one JSON object as its last line (the matmul peak)."""
    out = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=child_env(threads),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    parsed: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return parsed
