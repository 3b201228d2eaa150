"""A sweep directory (what ``fedmoe sweep`` writes), read and validated.

Input::

    DIR/sweep.csv                       one row per (cell, seed, method)
    DIR/<run>/results.json              one run's results (format 2, docs/results-format.md)

``sweep.csv`` columns: ``cell``, then the grid keys (any number, any names; ``p`` and
``opt_out`` stand for ``partition.p`` and ``partition.opt_out``), then ``seed``,
``method``, ``local_test_acc``, ``global_test_acc`` (client means in [0, 1]),
``local_test_std``, ``global_test_std`` (std over clients) and ``run`` (the run's
directory relative to DIR). Further columns after ``seed`` are ignored.

What the report shows of a method (its label, description, gate, baselines, variants)
comes from its entry in the runs' ``results.json`` (:class:`MethodInfo`), so a method
needs no code here. Every problem with the input is a :class:`ReportError` naming the
file (and line) at fault. Also here: the per-cell statistics the report's tables and
plots share.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmoe.errors import FedmoeError
from fedmoe.sweep.format import ALIASES, COLUMNS

SWEEP_CSV = "sweep.csv"
#: How far (absolute, accuracy in [0, 1]) sweep.csv may differ from the run's results.
TOLERANCE = 1e-3
#: The results.json format the report reads (docs/results-format.md).
FORMAT = 2
#: The splits of a method's entry, by the names the report's tables use.
SPLITS = {"local": "local_test", "global": "global_test"}


class ReportError(FedmoeError):
    """A sweep directory is missing, malformed or inconsistent."""


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, order=True)
class GridValue:
    """One grid value as written in sweep.csv. Numbers compare and sort as numbers
    (``0.5`` == ``0.50``, before any text); ``text`` is kept for display."""

    key: tuple[int, float, str]
    text: str = field(compare=False)

    @property
    def number(self) -> float | None:
        return self.key[1] if self.key[0] == 0 else None

    @staticmethod
    def parse(text: str) -> GridValue:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return GridValue((0, number, ""), text)
        return GridValue((1, 0.0, text), text)


@dataclass(frozen=True)
class Row:
    """One sweep.csv row; ``line`` is its line number in the file."""

    line: int
    cell: str
    grid: tuple[GridValue, ...]
    seed: int
    method: str
    local_acc: float
    global_acc: float
    run: str

    def accuracy(self, split: str) -> float:
        """The client-mean accuracy on ``split`` (``local`` or ``global``)."""
        return self.local_acc if split == "local" else self.global_acc


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its rows (every seed and method)."""

    name: str
    grid: tuple[GridValue, ...]
    rows: tuple[Row, ...]

    def seeds(self, method: str) -> list[int]:
        return sorted(r.seed for r in self.rows if r.method == method)


@dataclass(frozen=True)
class MethodInfo:
    """What the report shows of a method, from its entry in the first run (in
    sweep.csv order) that has it: ``label`` (display name), ``description`` (one line),
    ``mixture`` (it has ``gate`` statistics), ``contender`` (a method under test, which
    the leaderboard pairs with the best of the others; in runs from before results said
    so, every mixture but the field's PFL-MoE), ``baselines`` (per split, ``local`` /
    ``global``: the methods paired differences compare it with) and ``variants`` (it
    reports variants, e.g. an ablation)."""

    name: str
    label: str
    description: str
    mixture: bool
    contender: bool
    baselines: dict[str, tuple[str, ...]]
    variants: bool


@dataclass(frozen=True)
class Sweep:
    """A validated sweep directory: the grid keys (as in sweep.csv), the cells sorted
    by their grid values, the methods (in the order of the first run's results.json),
    what each method says of itself, and every run's results keyed by the ``run``
    column, in the order they were read."""

    directory: Path
    keys: tuple[str, ...]
    cells: tuple[Cell, ...]
    methods: tuple[str, ...]
    runs: dict[str, dict[str, Any]]
    info: dict[str, MethodInfo] = field(default_factory=dict)

    def values(self, key: str) -> list[GridValue]:
        """The distinct values of a grid key, sorted."""
        i = self.keys.index(key)
        return sorted({c.grid[i] for c in self.cells})

    @property
    def varying(self) -> tuple[str, ...]:
        """The grid keys with more than one value."""
        return tuple(k for k in self.keys if len(self.values(k)) > 1)

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for c in self.cells for r in c.rows})

    def label(self, method: str) -> str:
        """The method's display name (its name when the runs give none)."""
        info = self.info.get(method)
        return info.label if info is not None else method

    @property
    def mixtures(self) -> tuple[str, ...]:
        """The methods with gate statistics, in method order."""
        return tuple(m for m in self.methods if m in self.info and self.info[m].mixture)

    @property
    def contenders(self) -> tuple[str, ...]:
        """The methods under test (``contender``), in method order."""
        return tuple(m for m in self.methods if m in self.info and self.info[m].contender)


def _fail(path: Path, problem: str, line: int | None = None) -> ReportError:
    where = f"{path}: line {line}: " if line is not None else f"{path}: "
    return ReportError(where + problem)


def header_columns(path: Path, header: list[str]) -> tuple[list[str], dict[str, int]]:
    """Grid keys and the column index of every required column."""
    names = [h.strip() for h in header]
    missing = [c for c in ("cell", *COLUMNS) if c not in names]
    if missing:
        header_text = ",".join(names)
        if len(header_text) > 120:
            header_text = header_text[:117] + "..."
        raise _fail(path, f"missing column(s) {', '.join(missing)} (header: {header_text})")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise _fail(path, f"duplicated column(s) {', '.join(duplicated)}")
    start, end = names.index("cell"), names.index("seed")
    if start != 0 or end < start:
        raise _fail(path, "columns must be: cell, the grid keys, seed, method, ...")
    return names[1:end], {n: i for i, n in enumerate(names)}


def _number(path: Path, line: int, column: str, text: str, top: float | None) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0.0 or (top is not None and value > top):
        bound = f"a number in [0, {top:g}]" if top is not None else "a number >= 0"
        raise _fail(path, f"{column} is {text!r}, not {bound}", line)
    return value


def _row(path: Path, line: int, fields: list[str], keys: list[str], at: dict[str, int]) -> Row:
    def get(column: str) -> str:
        return fields[at[column]].strip()

    if not get("cell"):
        raise _fail(path, "empty cell name", line)
    if not get("method"):
        raise _fail(path, "empty method", line)
    if not get("run"):
        raise _fail(path, "empty run directory", line)
    try:
        seed = int(get("seed"))
    except ValueError:
        raise _fail(path, f"seed is {get('seed')!r}, not an integer", line) from None
    for column in ("local_test_std", "global_test_std"):
        _number(path, line, column, get(column), None)
    return Row(
        line=line,
        cell=get("cell"),
        grid=tuple(GridValue.parse(get(k)) for k in keys),
        seed=seed,
        method=get("method"),
        local_acc=_number(path, line, "local_test_acc", get("local_test_acc"), 1.0),
        global_acc=_number(path, line, "global_test_acc", get("global_test_acc"), 1.0),
        run=get("run"),
    )


def _read_csv(path: Path) -> tuple[list[str], list[Row]]:
    """Grid keys and rows of a sweep.csv, every field checked."""
    if not path.is_file():
        raise _fail(path, "not found; is this a directory written by `fedmoe sweep`?")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(path, f"cannot read ({exc})") from None
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
        if header is None:
            raise _fail(path, "empty file (no header)")
        keys, at = header_columns(path, header)
        rows = []
        for fields in reader:
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise _fail(
                    path, f"{len(fields)} fields, the header has {len(header)}", reader.line_num
                )
            rows.append(_row(path, reader.line_num, fields, keys, at))
    except csv.Error as exc:
        raise _fail(path, f"malformed CSV ({exc})", reader.line_num) from None
    if not rows:
        raise _fail(path, "no rows")
    return keys, rows


def _cells(path: Path, rows: list[Row]) -> tuple[Cell, ...]:
    """Rows grouped by cell, checked: one grid point per cell, one cell per grid point,
    one row per (cell, seed, method). Sorted by grid values."""
    by_name: dict[str, list[Row]] = {}
    for r in rows:
        by_name.setdefault(r.cell, []).append(r)
    cells = []
    owner: dict[tuple[GridValue, ...], str] = {}
    for name, own in by_name.items():
        first = own[0]
        for r in own:
            if r.grid != first.grid:
                raise _fail(
                    path, f"cell {name!r} has other grid values than on line {first.line}", r.line
                )
        if first.grid in owner:
            raise _fail(
                path,
                f"cells {owner[first.grid]!r} and {name!r} have the same grid values",
                first.line,
            )
        owner[first.grid] = name
        seen: dict[tuple[int, str], int] = {}
        for r in own:
            if (r.seed, r.method) in seen:
                raise _fail(
                    path,
                    f"cell {name!r}, seed {r.seed}, method {r.method!r} "
                    f"repeats line {seen[r.seed, r.method]}",
                    r.line,
                )
            seen[r.seed, r.method] = r.line
        cells.append(Cell(name, first.grid, tuple(own)))
    return tuple(sorted(cells, key=lambda c: c.grid))


def _load_json(path: Path, row: Row, csv_path: Path) -> dict[str, Any]:
    if not path.parent.is_dir():
        raise _fail(csv_path, f"run directory {path.parent} does not exist", row.line)
    if not path.is_file():
        raise _fail(path, f"not found (run of {csv_path.name} line {row.line})")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(path, f"cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise _fail(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(results, dict):
        raise _fail(path, "not a JSON object")
    return results


def lookup(tree: Any, dotted: str) -> Any:
    """``tree[a][b]`` for ``"a.b"``; ``None`` where a key is missing."""
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _per_client(path: Path, results: dict[str, Any], method: str, split: str) -> list[float]:
    values = lookup(results, f"methods.{method}.{split}.per_client")
    if not isinstance(values, list) or not values or not all(is_number(v) for v in values):
        raise _fail(
            path,
            f"methods.{method}.{split}.per_client is missing or not a non-empty list of numbers",
        )
    return [float(v) for v in values]


def _check_run(
    path: Path, results: dict[str, Any], row: Row, keys: list[str], csv_path: Path
) -> None:
    """The run has the row's method, agrees with its accuracies, and its config has
    the row's grid values (where the config names the key)."""
    for split, expected in (("local_test", row.local_acc), ("global_test", row.global_acc)):
        accs = _per_client(path, results, row.method, split)
        mean = statistics.fmean(accs)
        if abs(mean - expected) > TOLERANCE:
            raise _fail(
                csv_path,
                f"{split}_acc {expected:g} disagrees with {path} "
                f"(methods.{row.method}.{split} client mean {mean:.6g})",
                row.line,
            )
    for key, value in zip(keys, row.grid, strict=True):
        config = lookup(results.get("config"), ALIASES.get(key, key))
        if config is not None and not _same(config, value):
            raise _fail(
                path,
                f"config {ALIASES.get(key, key)} is {config!r} but "
                f"{csv_path.name} line {row.line} says {key}={value.text}",
            )


def _same(config: Any, value: GridValue) -> bool:
    if is_number(config) and value.number is not None:
        return math.isclose(float(config), value.number, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(config, bool):
        return value.text.lower() == str(config).lower()
    return str(config) == value.text


def _methods(rows: Iterable[Row], runs: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """The methods of the rows, in the order of the first run's ``methods`` (then of
    the next run's, for methods the first run lacks)."""
    present = set(r.method for r in rows)
    order: list[str] = []
    for results in runs.values():
        order += [m for m in results["methods"] if m in present and m not in order]
    return tuple(order)


def _check_format(path: Path, results: dict[str, Any]) -> None:
    found = results.get("format", 1)
    if found != FORMAT:
        raise _fail(
            path,
            f"results.json format {found!r}, not {FORMAT} (written before the methods "
            "redesign?); convert it with `python scripts/migrate-results.py DIR`",
        )
    if not isinstance(results.get("methods"), dict):
        raise _fail(path, "methods is missing or not an object")


def _text(path: Path, entry: dict[str, Any], name: str, key: str, default: str) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str):
        raise _fail(path, f"methods.{name}.{key} is not a string")
    return value


def _baselines(path: Path, entry: dict[str, Any], name: str) -> dict[str, tuple[str, ...]]:
    given = entry.get("baselines", {})
    out: dict[str, tuple[str, ...]] = {}
    problem = f"methods.{name}.baselines must map local_test / global_test to lists of methods"
    if not isinstance(given, dict):
        raise _fail(path, problem)
    for split, key in SPLITS.items():
        names = given.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _fail(path, problem)
        out[split] = tuple(names)
    return out


#: The one built-in mixture that is a baseline from the field, not under test.
FIELD_MIXTURE = "pfl-moe"


def _contender(path: Path, entry: dict[str, Any], method: str, mixture: bool) -> bool:
    """``contender`` as the entry says; in runs from before it said, whether it is one
    of fedmoe's mixtures (a ``mixture`` but the field's PFL-MoE)."""
    value = entry.get("contender", mixture and method != FIELD_MIXTURE)
    if not isinstance(value, bool):
        raise _fail(path, f"methods.{method}.contender must be true or false, got {value!r}")
    return value


def _info(paths: dict[str, Path], runs: dict[str, dict[str, Any]], method: str) -> MethodInfo:
    """A method's :class:`MethodInfo`, from the first run that has it."""
    run, entry = next(
        (r, res["methods"][method]) for r, res in runs.items() if method in res["methods"]
    )
    path = paths[run]
    if not isinstance(entry, dict):
        raise _fail(path, f"methods.{method} is not an object")
    mixture = isinstance(entry.get("gate"), dict)
    return MethodInfo(
        name=method,
        label=_text(path, entry, method, "label", method),
        description=_text(path, entry, method, "description", ""),
        mixture=mixture,
        contender=_contender(path, entry, method, mixture),
        baselines=_baselines(path, entry, method),
        variants=isinstance(entry.get("variants"), dict) and bool(entry["variants"]),
    )


def read_sweep(directory: Path) -> Sweep:
    """Read and validate ``directory/sweep.csv`` and every run's ``results.json``.

    Raises :class:`ReportError` (one line, naming the file) for a missing or malformed
    sweep.csv, a missing run directory or results.json, a results.json not in format 2
    or whose method entries are malformed, a run without the row's method,
    accuracies that disagree with the run by more than :data:`TOLERANCE`, or a run whose
    config contradicts the row's grid values.
    """
    directory = Path(directory)
    csv_path = directory / SWEEP_CSV
    keys, rows = _read_csv(csv_path)
    cells = _cells(csv_path, rows)
    runs: dict[str, dict[str, Any]] = {}
    paths: dict[str, Path] = {}
    for row in rows:
        path = directory / row.run / "results.json"
        if row.run not in runs:
            runs[row.run] = _load_json(path, row, csv_path)
            paths[row.run] = path
            _check_format(path, runs[row.run])
        _check_run(path, runs[row.run], row, keys, csv_path)
    methods = _methods(rows, runs)
    info = {m: _info(paths, runs, m) for m in methods}
    return Sweep(directory, tuple(keys), cells, methods, runs, info)


# --------------------------------------------------------------------------- numbers


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1; 0 for one value) over seeds."""

    mean: float
    std: float
    n: int

    @staticmethod
    def of(values: Sequence[float]) -> Stat:
        if not values:
            return Stat(math.nan, math.nan, 0)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return Stat(statistics.fmean(values), std, len(values))


def accuracy(cell: Cell, method: str, split: str) -> Stat:
    """Client-mean accuracy (in [0, 1]) of a method in a cell over seeds, from sweep.csv;
    ``split`` is ``local`` or ``global``."""
    rows = [r for r in cell.rows if r.method == method]
    return Stat.of([r.accuracy(split) for r in rows])


def runs_of(sweep: Sweep, cell: Cell, method: str | None = None) -> list[dict[str, Any]]:
    """The cell's runs' results, one per seed, in seed order (only the seeds with a row
    of ``method``, when given)."""
    by_seed = {r.seed: r.run for r in cell.rows if method is None or r.method == method}
    return [sweep.runs[by_seed[s]] for s in sorted(by_seed)]


def diverged(results: dict[str, Any], method: str) -> tuple[int, int] | None:
    """Where ``method``'s federated phase diverged: the first validated round whose
    validation loss was not finite (``val_loss`` null while ``val_accuracy`` is not;
    both null: no node replied) and the best round the phase kept, or ``None``."""
    federation = lookup(results, f"methods.{method}.federation")
    if not isinstance(federation, dict) or not is_number(federation.get("best_round")):
        return None
    history = federation.get("history")
    for row in history if isinstance(history, list) else []:
        if not isinstance(row, dict) or not is_number(row.get("round")):
            continue
        if row.get("val_loss") is None and is_number(row.get("val_accuracy")):
            return int(row["round"]), int(federation["best_round"])
    return None


def gate_means(results: dict[str, Any], method: str) -> tuple[float, float] | None:
    """The gate's mean weight on the specialist over clients, on their majority-class
    and on their other local-test samples (NaN where no client has any), from
    ``methods.<method>.gate``; ``None`` when the run has no such gate statistics."""
    methods = results.get("methods")
    entry = methods.get(method) if isinstance(methods, dict) else None
    means = []
    for group in ("majority", "other"):
        values = lookup(entry, f"gate.local_test.{group}")
        if not isinstance(values, list):
            return None
        present = [float(v) for v in values if is_number(v)]
        means.append(statistics.fmean(present) if present else math.nan)
    return means[0], means[1]


def canonical(key: str) -> str:
    """The config entry a grid key stands for (``p`` is ``partition.p``)."""
    return ALIASES.get(key, key)
