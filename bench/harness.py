"""The child side of a benchmark run: set threads, run one job, print one result line.

A contender module defines ``run(job) -> Measurement`` and calls :func:`contender_main`.
The result is one line ``BENCH_RESULT {json}`` on stdout, so other output (Ray's logs,
say) cannot be mistaken for it. ``seconds`` covers training only: data loading, process
start and the untimed warm-up step are outside it.
"""

from __future__ import annotations

import json
import resource
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from bench.workloads import Job, parse_job

MARKER = "BENCH_RESULT "


class Unsupported(Exception):
    """The contender cannot express this workload (the message says why)."""


@dataclass
class Measurement:
    """``seconds``: the timed region; ``seconds_with_startup``: the same work including
    the framework's start-up (Flower: Ray start and worker warm-up), where it has one."""

    seconds: float
    seconds_with_startup: float | None = None
    notes: list[str] = field(default_factory=list)


def configure_threads(threads: int) -> None:
    """The same intra-op thread count for every contender (the parent also sets
    ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` before the process starts)."""
    torch.set_num_threads(threads)


def self_peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def contender_main(name: str, run: Callable[[Job], Measurement]) -> None:
    """Parse the job from ``sys.argv``, run it and print the result line."""
    job = parse_job(sys.argv[1:])
    configure_threads(job.threads)
    record: dict[str, object] = {"contender": name, "job": job.__dict__, "samples": job.samples}
    try:
        m = run(job)
        record |= {
            "seconds": m.seconds,
            "seconds_with_startup": m.seconds_with_startup,
            "notes": m.notes,
        }
    except Unsupported as exc:
        record["skipped"] = str(exc)
    except Exception as exc:
        traceback.print_exc()
        record["error"] = f"{type(exc).__name__}: {exc}"
    record["peak_rss_self_mib"] = self_peak_rss_mib()
    print(MARKER + json.dumps(record), flush=True)
