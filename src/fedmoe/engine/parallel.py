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
import logging
import math
import pickle
import queue
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import torch
import torch.multiprocessing as tmp

from fedmoe.engine import precision

log = logging.getLogger("fedmoe")

T = TypeVar("T")

#: What a worker reports: (chunk, epochs done, clients still training).
Report = tuple[int, int, int]

_REPORTS: Any = None  # the worker's end of the progress queue
_AVAILABLE: Pool | None = None  # the pool opened by :func:`workers`, if any
_ACTIVE: Pool | None = None  # the pool the engine splits cohorts over, if any


class Pool(Protocol):
    """What the engine splits cohorts over: :class:`Workers` (local processes) or
    :class:`fedmoe.engine.ray_pool.RayWorkers` (Ray actors)."""

    n: int

    def close(self) -> None: ...

    def can_send(self, what: object) -> bool:
        """Whether ``what`` can travel to a worker (see :func:`sendable`)."""
        ...

    def map(
        self,
        fn: Callable[..., T],
        calls: Sequence[tuple[Any, ...]],
        progress: Callable[[Sequence[Report]], None] | None = None,
    ) -> list[T]: ...


def init_worker(reports: Any) -> None:
    """Set up a worker process: one torch thread, progress reports to ``reports``."""
    global _REPORTS
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    _REPORTS = reports


def call(mixed: bool, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker, under the caller's bf16 autocast setting."""
    with precision.mixed(mixed, torch.device("cpu")):
        return fn(*args)


def report(chunk: int) -> Callable[[int, int], None]:
    """A worker's progress callback for ``chunk`` (sends to the parent's bar)."""

    def send(done: int, active: int) -> None:
        _REPORTS.put((chunk, done, active))

    return send


class Workers:
    """``n`` spawned worker processes with one torch thread each."""

    def __init__(self, n: int) -> None:
        if n < 2:
            raise ValueError(f"a pool needs at least 2 workers, got {n}")
        self.n = n
        ctx = tmp.get_context("spawn")
        self._reports = ctx.Queue()
        self._pool = ProcessPoolExecutor(
            n, mp_context=ctx, initializer=init_worker, initargs=(self._reports,)
        )
        self._unpicklable: set[str] = set()

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)
        self._reports.close()

    def can_send(self, what: object) -> bool:
        return sendable(what, self._unpicklable)

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
        futures: list[Future[T]] = [self._pool.submit(call, mixed, fn, *args) for args in calls]
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


def sendable(what: object, refused: set[str]) -> bool:
    """Whether ``what`` (an objective, say) can travel to a worker; one that cannot (a
    class defined in ``__main__`` or a closure) is run in this process, logged once per
    type (``refused`` holds the types logged)."""
    try:
        pickle.dumps(what)
    except Exception as err:  # any failure to pickle means "cannot"
        name = type(what).__qualname__
        if name not in refused:
            refused.add(name)
            log.warning(
                "fedmoe: %s cannot be sent to worker processes (%s); its clients run in "
                "this process",
                name,
                err,
            )
        return False
    return True


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
