"""A run directory: config, checkpoints and results of one experiment.

``DIR/config.toml`` is written before training starts, ``DIR/checkpoints/`` (and, with
``tensorboard = true``, ``DIR/tensorboard/``) while it runs, and ``DIR/results.{json,md}``
plus ``DIR/rounds.csv`` when it ends (the checkpoints are then removed). A directory
with a config but no results is an interrupted run that :func:`resume` finishes with
the results it would have had.

A process running in a directory holds an exclusive lock on ``DIR/.lock`` (``flock``,
released when the process ends, however it ends), so several ``fedmoe sweep`` workers
can share one sweep directory: each runs the runs nobody else holds.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedmoe.errors import ConfigError
from fedmoe.experiment import config as cfgmod
from fedmoe.experiment.config import ExperimentConfig
from fedmoe.experiment.results import write_results
from fedmoe.experiment.run import run_experiment
from fedmoe.experiment.tensorboard import TensorBoardLog
from fedmoe.methods.base import ProgressFactory

CONFIG, RESULTS, CHECKPOINTS, LOCK = "config.toml", "results.json", "checkpoints", ".lock"


class Busy(ConfigError):
    """Another process is running in the directory."""


@contextmanager
def claim(directory: Path) -> Iterator[None]:
    """Hold ``directory`` for this process while the block runs; :class:`Busy` if
    another process holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / LOCK).open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise Busy(
                f"{directory} is in use by another fedmoe process (pid {holder}); "
                "wait for it to end or stop it"
            ) from None
        try:
            f.truncate(0)
            f.write(str(os.getpid()))
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_finished(directory: Path) -> bool:
    """Whether ``directory`` holds a finished run."""
    return (directory / RESULTS).exists()


def run_in(
    directory: Path, cfg: ExperimentConfig, progress: ProgressFactory | None = None
) -> dict[str, Any]:
    """Run ``cfg`` with its outputs in ``directory``, resuming if the directory holds an
    interrupted run of the same config; a different or finished run there is an error,
    and so is a directory another process is running in (:class:`Busy`)."""
    with claim(directory):
        return run_claimed(directory, cfg, progress)


def run_claimed(
    directory: Path, cfg: ExperimentConfig, progress: ProgressFactory | None = None
) -> dict[str, Any]:
    """:func:`run_in` for a caller that holds :func:`claim` of ``directory``."""
    config_file = directory / CONFIG
    if is_finished(directory):
        raise ConfigError(f"{directory} already holds finished results; choose another --out")
    if config_file.exists():
        if _load(config_file) != cfg:
            raise ConfigError(
                f"{directory} holds an interrupted run of another config; "
                f"use 'fedmoe run --resume {directory}' or another --out"
            )
    else:
        tmp = directory / f".{CONFIG}.tmp"
        tmp.write_text(cfgmod.dumps_toml(cfgmod.to_dict(cfg)))
        tmp.replace(config_file)
    return _finish(directory, cfg, progress)


def resume(directory: Path, progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Finish the interrupted run in ``directory`` with its saved config."""
    config_file = directory / CONFIG
    if not config_file.exists():
        raise ConfigError(f"{directory}: no {CONFIG} here, so there is no run to resume")
    with claim(directory):
        if is_finished(directory):
            raise ConfigError(f"{directory}: this run has finished already (results.json exists)")
        return _finish(directory, _load(config_file), progress)


def _load(path: Path) -> ExperimentConfig:
    try:
        return cfgmod.from_dict(tomllib.loads(path.read_text()))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _finish(
    directory: Path, cfg: ExperimentConfig, progress: ProgressFactory | None
) -> dict[str, Any]:
    log = TensorBoardLog(directory / "tensorboard") if cfg.tensorboard else None
    on_round = log.round if log is not None else None
    results = run_experiment(cfg, progress, checkpoints=directory / CHECKPOINTS, on_round=on_round)
    write_results(results, directory)
    if log is not None:
        log.results(results)
    shutil.rmtree(directory / CHECKPOINTS, ignore_errors=True)
    return results
