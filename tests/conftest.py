"""Test-wide settings: each pytest-xdist worker runs torch with one thread, so the
workers side by side never oversubscribe the cores (two processes with two threads
each can run many times slower than one)."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"

#: Files that take minutes, started first so the two workers finish together.
SLOW_FIRST = (
    "tests/flower/test_deployment.py",
    "tests/flower/test_simulation.py",
    "tests/experiment/test_resume.py",
    "tests/experiment/test_run.py",
    "tests/flower/test_app.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return SLOW_FIRST.index(path) if path in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: each file keeps its own order
