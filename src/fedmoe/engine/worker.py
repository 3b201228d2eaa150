"""What runs inside a worker (a local process of :mod:`fedmoe.engine.parallel` or a Ray
actor of :mod:`fedmoe.engine.ray_pool`): its set-up, its calls and its progress reports,
and what can be sent to it."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from fedmoe.engine import precision

log = logging.getLogger("fedmoe")

T = TypeVar("T")

#: What a worker reports: (chunk, epochs done, clients still training).
Report = tuple[int, int, int]

_REPORTS: Any = None  # the worker's end of the progress queue


def init(reports: Any) -> None:
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
