"""Sweeps: a grid of config values x seeds, each cell a resumable run directory.

``DIR/runs/<cell>-s<seed>/`` is one run (see :mod:`fedmoe.experiment.rundir`, which
runs :func:`fedmoe.experiment.run.run_experiment`);
finished runs are skipped when the sweep is run again, interrupted ones resume from
their checkpoints. ``DIR/sweep.csv`` has one row per (cell, seed, method).
Several workers may run the same sweep on one directory at once (one per core or
device): each skips the runs another worker holds.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from fedmoe.errors import ConfigError
from fedmoe.experiment import config as cfgmod
from fedmoe.experiment import rundir
from fedmoe.methods.base import ProgressFactory
from fedmoe.sweep.format import ALIASES, COLUMNS


@dataclass(frozen=True)
class Axis:
    """One grid axis: the key as given (``p``) and its values as written (``"0.2"``)."""

    key: str
    values: tuple[str, ...]

    @property
    def config_key(self) -> str:
        return ALIASES.get(self.key, self.key)


def _expand(values: list[str], item: str) -> list[str]:
    """Expand ``a,b,...,z`` into the arithmetic progression from a to z with step b-a."""
    if "..." not in values:
        return values
    i = values.index("...")
    try:
        if i < 2 or i != len(values) - 2:
            raise InvalidOperation
        a, b, z = Decimal(values[i - 2]), Decimal(values[i - 1]), Decimal(values[i + 1])
    except InvalidOperation:
        raise ConfigError(
            f"grid {item!r}: write a range as a,b,...,z with numbers a, b, z"
        ) from None
    step = b - a
    if step <= 0 or z < b:
        raise ConfigError(f"grid {item!r}: a range a,b,...,z needs a < b <= z")
    count = int((z - a) / step)
    out = values[: i - 2] + [str(a + n * step) for n in range(count + 1)]
    if Decimal(out[-1]) != z:
        raise ConfigError(f"grid {item!r}: {z} is not reached in steps of {step} from {a}")
    return out


def parse_axis(item: str) -> Axis:
    """``"p=0.2,0.5"`` or ``"p=0.2,0.3,...,1.0"`` -> an :class:`Axis`."""
    key, sep, raw = item.partition("=")
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if not sep or not key.strip() or not values:
        raise ConfigError(f"grid {item!r} must look like key=v1,v2,... e.g. p=0.2,0.5,0.8")
    return Axis(key.strip(), tuple(_expand(values, item)))


def cell_name(cell: tuple[tuple[Axis, str], ...]) -> str:
    return ",".join(f"{axis.key}={value}" for axis, value in cell) or "base"


def _number(value: str) -> Any:
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value else number


def run_sweep(
    base: dict[str, Any],
    axes: list[Axis],
    seeds: int,
    out: Path,
    progress: ProgressFactory | None = None,
    log: Callable[[str], None] = print,
    ray: str | None = None,
) -> Path | None:
    """Run every cell of the grid for ``seeds`` seeds (``base`` seed + 0, 1, ...; every
    cell for one seed before the next seed), skip finished runs, resume interrupted ones,
    skip those another process is running, and write ``out/sweep.csv`` (``None``, and no
    table, while no run has finished: other workers hold every one). Every cell's
    config is validated before the first run starts. With ``ray`` (``"local"`` or a Ray
    cluster's address), each run is a Ray task of one CPU (:mod:`fedmoe.sweep.cluster`)."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if len({a.key for a in axes}) != len(axes):
        raise ConfigError("each grid key may be given once")
    base_seed = cfgmod.from_dict(base).seed
    plan = []
    # Seed-major order: an interrupted sweep has covered the whole grid once before it
    # repeats any cell with another seed. (sweep.csv lists cells in grid order.)
    cells = list(itertools.product(*[[(a, v) for v in a.values] for a in axes]))
    for i in range(seeds):
        for cell in cells:
            overrides = [f"{axis.config_key}={value}" for axis, value in cell] + [
                f"seed={base_seed + i}"
            ]
            cfg = cfgmod.from_dict(cfgmod.apply_overrides(base, overrides))
            plan.append((cell, cfg, out / "runs" / f"{cell_name(cell)}-s{cfg.seed}"))
    table = [(c, d) for c, _, d in sorted(plan, key=lambda r: (cells.index(r[0]), r[1].seed))]
    runs = [
        (f"[{n}/{len(plan)}] {cell_name(cell)} seed {cfg.seed}", cfg, run_dir)
        for n, (cell, cfg, run_dir) in enumerate(plan, 1)
    ]
    if ray is not None:
        from fedmoe.sweep import cluster

        outcomes = cluster.run_all(runs, ray, attempt, log, lambda: write_csv(out, axes, table))
    else:
        outcomes = {}
        for label, cfg, run_dir in runs:

            def started(label: str = label, run_dir: Path = run_dir) -> None:
                log(f"{label}: running in {run_dir}")

            outcomes[run_dir] = attempt(run_dir, cfg, progress, started)
            if outcomes[run_dir] == DONE:
                write_csv(out, axes, table)
            else:
                log(f"{label}: {outcomes[run_dir]}")
    elsewhere = [d for d, outcome in outcomes.items() if outcome == BUSY]
    unfinished = [d for d in elsewhere if not rundir.is_finished(d)]
    if unfinished:
        log(
            f"{len(unfinished)} run(s) still running in other workers; sweep.csv and the "
            "report will be complete when the last worker ends"
        )
    if not any(rundir.is_finished(d) for _, d in table):
        return None
    return write_csv(out, axes, table)


#: What :func:`attempt` did with a run.
FINISHED_BEFORE = "finished before, skipped"
FINISHED_ELSEWHERE = "finished by another worker, skipped"
BUSY = "another worker is running it, skipped"
DONE = "done"


def attempt(
    run_dir: Path,
    cfg: cfgmod.ExperimentConfig,
    progress: ProgressFactory | None = None,
    started: Callable[[], None] = lambda: None,
) -> str:
    """Run ``cfg`` in ``run_dir`` unless it has finished or another process holds it
    (resuming an interrupted run there; ``started`` is called once this process holds
    the directory); returns which of those happened."""
    if rundir.is_finished(run_dir):
        return FINISHED_BEFORE
    try:
        with rundir.claim(run_dir):
            if rundir.is_finished(run_dir):
                return FINISHED_ELSEWHERE
            started()
            rundir.run_claimed(run_dir, cfg, progress)
            return DONE
    except rundir.Busy:
        return BUSY


def write_csv(
    out: Path, axes: list[Axis], runs: list[tuple[tuple[tuple[Axis, str], ...], Path]]
) -> Path:
    """Write ``out/sweep.csv`` from the finished runs among ``runs``."""
    path = out / "sweep.csv"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".sweep.csv.tmp"
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["cell", *[a.key for a in axes], *COLUMNS])
        for cell, run_dir in runs:
            if not rundir.is_finished(run_dir):
                continue
            results = json.loads((run_dir / rundir.RESULTS).read_text())
            for method, m in results["methods"].items():
                accs = [m[s]["mean"] for s in ("local_test", "global_test")]
                stds = [m[s]["std"] for s in ("local_test", "global_test")]
                writer.writerow(
                    [
                        cell_name(cell),
                        *[_number(v) for _, v in cell],
                        results["config"]["seed"],
                        method,
                        *[f"{v:.6f}" for v in accs],
                        *[f"{v:.6f}" if math.isfinite(v) else "nan" for v in stds],
                        str(run_dir.relative_to(out)),
                    ]
                )
    tmp.replace(path)
    return path
