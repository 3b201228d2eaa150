"""A sweep's runs as Ray tasks: on this machine (``local``) or on an existing cluster.

Each run is one task of one CPU running with one torch thread; Ray packs as many side
by side as the cluster has CPUs. A task does exactly what one run of the local sweep
does (:func:`fedmoe.sweep.runner.attempt`): it claims the run directory, resumes an
interrupted run there and skips a finished one, so a sweep interrupted on Ray resumes
on Ray or locally, and local workers can share the sweep directory with it. On a
cluster the sweep directory must be on a file system every node mounts at the same
path, and every node needs fedmoe (and any plugin or model module the config names)
installed in the Python that Ray runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedmoe.engine import ray_pool
from fedmoe.errors import FedmoeError
from fedmoe.experiment import config as cfgmod

#: What a task runs: :func:`fedmoe.sweep.runner.attempt` (run directory, config).
Attempt = Callable[[Path, cfgmod.ExperimentConfig], str]


def _task(attempt: Attempt, run_dir: str, cfg: dict[str, Any]) -> str:
    """One run in a Ray worker process, with one torch thread."""
    import torch

    torch.set_num_threads(1)
    return attempt(Path(run_dir), cfgmod.from_dict(cfg))


def run_all(
    runs: Sequence[tuple[str, cfgmod.ExperimentConfig, Path]],
    address: str,
    attempt: Attempt,
    log: Callable[[str], None],
    on_done: Callable[[], object],
) -> dict[Path, str]:
    """Run ``attempt`` for each of ``runs`` (label, config, run directory) as a Ray task
    on ``address`` (:data:`~fedmoe.engine.ray_pool.LOCAL`, or a cluster address such as ``auto`` or
    ``ray://host:10001``); ``on_done`` is called after each. Returns run directory ->
    outcome.
    The first run that fails cancels the rest and is raised as a one-line error."""
    ray = ray_pool.ray_module()
    started_here = ray_pool.connect(address)
    try:
        task = ray.remote(num_cpus=1)(_task).options(runtime_env=ray_pool.ONE_THREAD)
        pending = {
            task.remote(attempt, str(run_dir.resolve()), cfgmod.to_dict(cfg)): (label, run_dir)
            for label, cfg, run_dir in runs
        }
        log(f"ray: {len(pending)} run(s) as tasks on {ray_pool.cluster_cpus()} CPU(s)")
        outcomes: dict[Path, str] = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            label, run_dir = pending.pop(done[0])
            try:
                outcomes[run_dir] = ray.get(done[0])
            except ray.exceptions.RayTaskError as err:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise FedmoeError(f"{label} failed on Ray: {ray_pool.reason(err)}") from None
            log(f"{label}: {outcomes[run_dir]}")
            on_done()
        return outcomes
    finally:
        if started_here:
            ray.shutdown()
