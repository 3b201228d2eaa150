"""Test-wide settings: each pytest-xdist worker runs torch with one thread, so the
workers side by side never oversubscribe the cores (two processes with two threads
each can run many times slower than one), and ``fedmoe run`` spawns no worker processes
of its own unless a test asks for them (``--workers``)."""

from __future__ import annotations

import os

import torch

os.environ.setdefault("FEDMOE_WORKERS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
