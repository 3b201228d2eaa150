"""Test-wide settings: each pytest-xdist worker runs torch with one thread, so the
workers side by side never oversubscribe the cores (two processes with two threads
each can run many times slower than one)."""

from __future__ import annotations

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
