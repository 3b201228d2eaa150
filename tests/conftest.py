"""Test-wide settings: each pytest-xdist worker runs torch with one thread, so the
workers side by side never oversubscribe the cores (two processes with two threads
each can run many times slower than one), and ``fedmoe run`` spawns no worker processes
of its own unless a test asks for them (``--workers``)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("FEDMOE_WORKERS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A real Ray on this machine (two CPUs, loopback, no dashboard) for one test module;
    fedmoe uses a Ray that is already up and leaves it running."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
        object_store_memory=100 * 1024 * 1024,
    )
    yield
    ray.shutdown()
