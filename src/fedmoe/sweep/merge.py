"""Several sweeps of the same grid, each with other methods, as one sweep directory.

``fedmoe merge OUT DIR...`` writes ``OUT/sweep.csv`` holding every row of each DIR's
sweep.csv, its ``run`` rewritten relative to OUT, so that ``fedmoe report OUT`` puts
every method of every DIR in one leaderboard. A study too long for one sitting runs as
several sweeps (one per group of methods, each resumable and publishable on its own),
and a new method joins a published study by a sweep of its own over the same grid and
seeds, without re-running the others.

What it checks, each failure one :class:`ReportError` naming the directories: every
DIR is a valid sweep directory (:func:`read_sweep`); all have the same grid keys;
no (grid point, seed, method) comes from two DIRs; and the runs that share a grid point
and seed were run on the same data (dataset, partition and clients), so their paired
differences compare the same clients. OUT may not be one of the DIRs.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedmoe.sweep.format import COLUMNS
from fedmoe.sweep.reader import (
    SWEEP_CSV,
    GridValue,
    ReportError,
    Sweep,
    header_columns,
    read_sweep,
)


def _data(results: dict[str, Any]) -> tuple[Any, ...]:
    """What must be equal for two runs' clients to be the same clients."""
    dataset = results.get("dataset")
    name = dataset.get("name") if isinstance(dataset, dict) else dataset
    return name, results.get("partition"), results.get("clients")


def merge(out: Path, sources: Sequence[Path]) -> Path:
    """Write ``out/sweep.csv`` from the sweeps in ``sources`` (checked as the module
    says) and return its path; ``out`` is created if needed."""
    out = Path(out)
    if not sources:
        raise ReportError("merge: give at least one sweep directory")
    resolved = [Path(s).resolve() for s in sources]
    if out.resolve() in resolved:
        raise ReportError(f"merge: {out} is one of the sweeps to merge; write elsewhere")
    if len(set(resolved)) != len(resolved):
        raise ReportError("merge: a sweep directory is given twice")
    sweeps = [read_sweep(Path(s)) for s in sources]
    first = sweeps[0]
    for sweep in sweeps[1:]:
        if sweep.keys != first.keys:
            raise ReportError(
                f"merge: {sweep.directory} has grid keys {list(sweep.keys)}, "
                f"{first.directory} has {list(first.keys)}"
            )
    names: dict[tuple[GridValue, ...], str] = {}
    owner: dict[tuple[tuple[GridValue, ...], int, str], Sweep] = {}
    data: dict[tuple[tuple[GridValue, ...], int], tuple[Sweep, tuple[Any, ...]]] = {}
    lines: list[list[str]] = []
    for sweep in sweeps:
        raw = _raw_rows(sweep.directory)
        for cell in sweep.cells:
            name = names.setdefault(cell.grid, cell.name)
            for row in cell.rows:
                key = (cell.grid, row.seed, row.method)
                if key in owner:
                    raise ReportError(
                        f"merge: cell {cell.name!r}, seed {row.seed}, method {row.method!r} "
                        f"is in both {owner[key].directory} and {sweep.directory}"
                    )
                owner[key] = sweep
                here = _data(sweep.runs[row.run])
                seen = data.setdefault((cell.grid, row.seed), (sweep, here))
                if seen[1] != here:
                    raise ReportError(
                        f"merge: cell {cell.name!r}, seed {row.seed} ran on other data "
                        f"(dataset, partition or clients) in {seen[0].directory} than in "
                        f"{sweep.directory}"
                    )
                fields = raw[row.line]
                run = os.path.relpath(sweep.directory / row.run, out)
                lines.append([name, *fields[1:-1], Path(run).as_posix()])
    header = ["cell", *first.keys, *COLUMNS]
    out.mkdir(parents=True, exist_ok=True)
    path = out / SWEEP_CSV
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(lines)
    read_sweep(out)
    return path


def _raw_rows(directory: Path) -> dict[int, list[str]]:
    """A sweep.csv's rows by line number, its columns in the order :data:`COLUMNS`
    names them after the grid keys (further columns dropped)."""
    path = directory / SWEEP_CSV
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        keys, at = header_columns(path, next(reader))
        order = [at["cell"], *(at[k] for k in keys), *(at[c] for c in COLUMNS)]
        rows = {}
        for fields in reader:
            if fields:
                rows[reader.line_num] = [fields[i] for i in order]
        return rows
