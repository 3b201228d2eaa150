"""Stage checkpoints of one run, so a killed run resumes with identical results.

A run directory's ``checkpoints/`` holds one file per finished stage: each method's
output (``<method>``) and, for a method that federates, its federated phase
(``<method>.federated``) and the server's progress every few rounds
(``<method>.federated-progress``), and the seconds of each phase so far (``timing``).
Files are written to a temporary name and renamed, so a ``kill -9`` at any moment leaves
either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fedmoe.errors import DataError


class Checkpoints:
    """Load and save named stage states under ``directory`` (``None``: do nothing)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def _path(self, stage: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{stage}.pt"

    def load(self, stage: str) -> dict[str, Any] | None:
        """The saved state of ``stage``, or ``None`` if it has none."""
        if self.directory is None or not self._path(stage).exists():
            return None
        try:
            state: dict[str, Any] = torch.load(self._path(stage), weights_only=False)
        except Exception as exc:  # a corrupt file must not be a bare traceback
            raise DataError(f"{self._path(stage)}: unreadable checkpoint ({exc})") from None
        return state

    def save(self, stage: str, state: dict[str, Any]) -> None:
        """Write ``state`` for ``stage`` atomically."""
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{stage}.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self._path(stage))
