"""Worker processes on Ray: a run's personalisation and evaluation split over Ray actors
(one CPU and one torch thread each), on this machine or on an existing cluster.

:class:`RayWorkers` keeps the contract of :class:`fedmoe.engine.parallel.Workers`
(``n``, ``map``, ``can_send``, ``close``), so the engine splits cohorts over actors
exactly as over local processes, with the same results client by client. Arguments
travel by value through Ray's object store: a cohort's examples are first cut down to
the rows its clients use (:meth:`~fedmoe.engine.cohort.ClientData.compact`), so a chunk
of clients carries its own data, not the whole dataset. Every node needs fedmoe (and
any plugin or model module the config names) installed in the Python that Ray runs.

:func:`connect` is also how ``fedmoe sweep --ray`` reaches Ray.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fedmoe.engine import precision, worker
from fedmoe.engine.cohort import ClientData
from fedmoe.errors import ConfigError, FedmoeError

T = TypeVar("T")

#: ``--ray`` value that starts a Ray on this machine (and stops it after).
LOCAL = "local"

#: One torch/OpenMP thread per Ray worker process.
ONE_THREAD = {"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}


def ray_module() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--ray needs Ray: pip install 'flwr[simulation]' (or ray) in fedmoe's environment"
        ) from None
    return ray


def connect(address: str) -> bool:
    """Make sure this process is connected to Ray: :data:`LOCAL` starts a private Ray of
    this machine's cores on loopback, anything else (``auto``, ``ray://host:10001``) joins
    that cluster. Returns whether this call connected (the caller then shuts it down);
    a Ray already initialised in this process is used as it is."""
    ray = ray_module()
    if ray.is_initialized():
        return False
    # Keep Ray 2.x's notice about a future default (accelerator variables) quiet.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if address == LOCAL:
        ray.init(
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            configure_logging=False,
        )
        return True
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ConfigError(f"--ray {address}: cannot connect to the Ray cluster: {reason}") from None
    return True


def cluster_cpus() -> int:
    """The CPUs of the Ray this process is connected to."""
    return int(ray_module().cluster_resources().get("CPU", 0))


def reason(err: BaseException) -> str:
    """A Ray task's or actor's error as one line (its cause's message)."""
    cause = getattr(err, "cause", None)
    cause = cause if isinstance(cause, BaseException) else err
    return " ".join(str(cause).split()) or type(cause).__name__


class _Actor:
    """One worker: one torch thread; runs what :meth:`RayWorkers.map` sends."""

    def __init__(self, reports: Any) -> None:
        worker.init(reports)

    def call(self, mixed: bool, fn: Callable[..., T], *args: Any) -> T:
        return worker.call(mixed, fn, *args)


class RayWorkers:
    """``n`` Ray actors of one CPU each on the Ray at ``address`` (see :func:`connect`);
    ``n`` ``None``: one per CPU of the cluster."""

    def __init__(self, address: str, n: int | None = None) -> None:
        ray = ray_module()
        from ray.util.queue import Queue

        self._refused: set[str] = set()
        self._started = connect(address)
        try:
            self.n = n if n is not None else cluster_cpus()
            if self.n < 2:
                raise ConfigError(f"--ray needs at least 2 workers, got {self.n}")
            self._reports = Queue()
            actor = ray.remote(num_cpus=1)(_Actor).options(runtime_env=ONE_THREAD)
            self._actors = [actor.remote(self._reports) for _ in range(self.n)]
        except BaseException:
            if self._started:
                ray.shutdown()
            raise

    def close(self) -> None:
        ray = ray_module()
        for a in self._actors:
            ray.kill(a)
        self._reports.shutdown()
        if self._started:
            ray.shutdown()

    def can_send(self, what: object) -> bool:
        return worker.sendable(what, self._refused)

    def map(
        self,
        fn: Callable[..., T],
        calls: Sequence[tuple[Any, ...]],
        progress: Callable[[Sequence[worker.Report]], None] | None = None,
    ) -> list[T]:
        """``fn(*args)`` for each ``args`` of ``calls`` on the actors (call ``i`` on
        actor ``i mod n``), results in order; ``progress`` sees every report as it
        arrives. A worker's exception is raised here (a lost actor as
        :class:`~fedmoe.errors.FedmoeError`)."""
        ray = ray_module()
        from ray.util.queue import Empty

        mixed = precision.on_cpu()
        refs = [
            self._actors[i % self.n].call.remote(mixed, fn, *(_compact(a) for a in args))
            for i, args in enumerate(calls)
        ]
        latest: dict[int, worker.Report] = {}
        pending = list(refs)
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.05)
            while True:
                try:
                    chunk, done, active = self._reports.get_nowait()
                except Empty:
                    break
                latest[chunk] = (chunk, done, active)
                if progress is not None:
                    progress(list(latest.values()))
        try:
            return list(ray.get(refs))
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, BaseException):
                raise err.cause from None
            raise FedmoeError(f"a Ray worker failed: {reason(err)}") from None
        except ray.exceptions.RayError as err:
            raise FedmoeError(f"a Ray worker failed: {reason(err)}") from None


def _compact(arg: Any) -> Any:
    return arg.compact() if isinstance(arg, ClientData) else arg
