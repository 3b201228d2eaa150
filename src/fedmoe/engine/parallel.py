"""Worker processes for independent clients: a cohort split into contiguous chunks, one
chunk a process, each process with one torch thread.

Clients of a personalisation stage (or of an evaluation) never interact: each one's
computation reads only its own rows, its own random stream (keyed by its id) and its own
batches, so training or evaluating a chunk of clients alone gives, client by client, what
training the whole cohort gives (tested in float32 and float64). The command line opens
a pool (:func:`workers`) and the driver engages it for the stages where that holds,
personalisation and evaluation (:func:`engaged`); :func:`~fedmoe.engine.train.train` and
:func:`~fedmoe.engine.evaluate.evaluate` then split their cohorts over it. Federated
rounds, whose cohorts are small, stay in the calling process.

Workers are spawned (not forked: the parent's OpenMP threads do not survive a fork) and
reused for every stage of a run; tensors travel through shared memory. Past one machine
the same workers can be Ray actors (:mod:`fedmoe.engine.ray_pool`, ``--ray``).
"""

from __future__ import annotations

import itertools
import math
import queue
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import torch
import torch.multiprocessing as tmp

from fedmoe.engine import precision, worker
from fedmoe.engine.worker import Report

T = TypeVar("T")


_AVAILABLE: Pool | None = None  # the pool opened by :func:`workers`, if any
_ACTIVE: Pool | None = None  # the pool the engine splits cohorts over, if any


class Pool(Protocol):
    """What the engine splits cohorts over: :class:`Workers` (local processes) or
    :class:`fedmoe.engine.ray_pool.RayWorkers` (Ray actors)."""

    n: int

    def close(self) -> None: ...

    def can_send(self, what: object) -> bool:
        """Whether ``what`` can travel to a worker (:func:`fedmoe.engine.worker.sendable`)."""
        ...

    def map(
        self,
        fn: Callable[..., T],
        calls: Sequence[tuple[Any, ...]],
        progress: Callable[[Sequence[Report]], None] | None = None,
    ) -> list[T]: ...


class Workers:
    """``n`` spawned worker processes with one torch thread each."""

    def __init__(self, n: int) -> None:
        if n < 2:
            raise ValueError(f"a pool needs at least 2 workers, got {n}")
        self.n = n
        ctx = tmp.get_context("spawn")
        self._reports = ctx.Queue()
        self._pool = ProcessPoolExecutor(
            n, mp_context=ctx, initializer=worker.init, initargs=(self._reports,)
        )
        self._unpicklable: set[str] = set()

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)
        self._reports.close()

    def can_send(self, what: object) -> bool:
        return worker.sendable(what, self._unpicklable)

    def map(
        self,
        fn: Callable[..., T],
        calls: Sequence[tuple[Any, ...]],
        progress: Callable[[Sequence[Report]], None] | None = None,
    ) -> list[T]:
        """``fn(*args)`` for each ``args`` of ``calls`` in the workers, results in order;
        ``progress`` sees every report as it arrives (the latest per chunk). A worker's
        exception is raised here."""
        mixed = precision.on_cpu()
        futures: list[Future[T]] = [
            self._pool.submit(worker.call, mixed, fn, *args) for args in calls
        ]
        latest: dict[int, Report] = {}
        while not all(f.done() for f in futures):
            try:
                chunk, done, active = self._reports.get(timeout=0.05)
            except queue.Empty:
                continue
            latest[chunk] = (chunk, done, active)
            if progress is not None:
                progress(list(latest.values()))
        return [f.result() for f in futures]


@contextmanager
def workers(n: int | None, ray: str | None = None) -> Iterator[Pool | None]:
    """A pool of ``n`` workers made available for the block (no processes for ``n`` < 2);
    the driver engages it where clients are independent (:func:`engaged`). With ``ray``
    (``"local"`` or a cluster's address) the workers are Ray actors, ``n`` ``None``
    meaning one per CPU of the cluster."""
    global _AVAILABLE
    pool: Pool | None
    if ray is not None:
        from fedmoe.engine.ray_pool import RayWorkers

        pool = RayWorkers(ray, n)
    elif n is None or n < 1:
        raise ValueError(f"workers must be at least 1, got {n}")
    else:
        pool = Workers(n) if n > 1 else None
    previous, _AVAILABLE = _AVAILABLE, pool
    try:
        yield pool
    finally:
        _AVAILABLE = previous
        if pool is not None:
            pool.close()


@contextmanager
def engaged(allowed: bool = True) -> Iterator[None]:
    """Inside the block the engine splits cohorts over the available pool (if any, and
    if ``allowed``: the driver refuses for a GPU run)."""
    with using(_AVAILABLE if allowed else None):
        yield


@contextmanager
def using(pool: Pool | None) -> Iterator[None]:
    """Let the engine split cohorts over ``pool`` inside the block."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, pool
    try:
        yield
    finally:
        _ACTIVE = previous


def active() -> Pool | None:
    """The pool cohorts are split over here (``None`` in a worker and by default)."""
    return _ACTIVE


def chunks(k: int, pieces: int) -> list[torch.Tensor]:
    """``range(k)`` in ``min(pieces, k)`` contiguous chunks whose sizes differ by at
    most one."""
    pieces = max(1, min(pieces, k))
    size, extra = divmod(k, pieces)
    bounds = [0]
    for i in range(pieces):
        bounds.append(bounds[-1] + size + (1 if i < extra else 0))
    return [torch.arange(a, b) for a, b in itertools.pairwise(bounds)]


def pieces(k: int, max_cohort: int, pool: Pool | None) -> int:
    """How many chunks ``k`` clients are split into: enough to keep each within
    ``max_cohort``, and at least one per worker of ``pool``."""
    least = math.ceil(k / max_cohort) if k else 1
    return max(least, min(pool.n, k)) if pool is not None else least
