"""``fedmoe report DIR``: tables and plots of a sweep directory, as markdown + PNG.

Input (what ``fedmoe sweep`` writes)::

    DIR/sweep.csv                       one row per (cell, seed, method)
    DIR/<run>/results.json              one run's results (``fedmoe run``'s format)

``sweep.csv`` columns: ``cell``, then the grid keys (any number, any names; ``p`` and
``opt_out`` stand for ``partition.p`` and ``partition.opt_out``), then ``seed``,
``method``, ``local_test_acc``, ``global_test_acc`` (client means in [0, 1]),
``local_test_std``, ``global_test_std`` (std over clients) and ``run`` (the run's
directory relative to DIR). Further columns after ``seed`` are ignored.

Output: ``DIR/report.md`` and ``DIR/plots/*.png``. Every problem with the input is a
:class:`ReportError` naming the file (and line) at fault, raised before anything is
written.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmoe.errors import FedmoeError
from fedmoe.experiment import plots
from fedmoe.experiment.config import ExperimentConfig, to_dict
from fedmoe.experiment.paired import paired_section
from fedmoe.experiment.plots import BarPanel, BoxPanel, Curve, ScatterPoint, method_label
from fedmoe.experiment.sweep_format import ALIASES, COLUMNS

__all__ = ["ReportError", "Sweep", "read_sweep", "write_report"]

SWEEP_CSV = "sweep.csv"
REPORT_MD = "report.md"
PLOTS_DIR = "plots"
#: How far (absolute, accuracy in [0, 1]) sweep.csv may differ from the run's results.
TOLERANCE = 1e-3
_PAPER_METHODS = ("fedavg", "local", "finetune", "moe")
_AXIS_NAMES = {
    "partition.p": "majority-class fraction p",
    "partition.opt_out": "opt-out fraction",
    "partition.alpha": "Dirichlet alpha",
}
#: At most this many series (line styles) or panels in one figure; more go to more files.
_PER_FIGURE = 4


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


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its rows (every seed and method)."""

    name: str
    grid: tuple[GridValue, ...]
    rows: tuple[Row, ...]

    def seeds(self, method: str) -> list[int]:
        return sorted(r.seed for r in self.rows if r.method == method)


@dataclass(frozen=True)
class Sweep:
    """A validated sweep directory: the grid keys (as in sweep.csv), the cells sorted
    by their grid values, the methods (paper order first), and every run's results
    keyed by the ``run`` column."""

    directory: Path
    keys: tuple[str, ...]
    cells: tuple[Cell, ...]
    methods: tuple[str, ...]
    runs: dict[str, dict[str, Any]]

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


def _fail(path: Path, problem: str, line: int | None = None) -> ReportError:
    where = f"{path}: line {line}: " if line is not None else f"{path}: "
    return ReportError(where + problem)


def _header(path: Path, header: list[str]) -> tuple[list[str], dict[str, int]]:
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
        keys, at = _header(path, header)
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


def _lookup(tree: Any, dotted: str) -> Any:
    """``tree[a][b]`` for ``"a.b"``; ``None`` where a key is missing."""
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _per_client(path: Path, results: dict[str, Any], method: str, split: str) -> list[float]:
    values = _lookup(results, f"methods.{method}.{split}.per_client")
    if not isinstance(values, list) or not values or not all(_is_number(v) for v in values):
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
        config = _lookup(results.get("config"), ALIASES.get(key, key))
        if config is not None and not _same(config, value):
            raise _fail(
                path,
                f"config {ALIASES.get(key, key)} is {config!r} but "
                f"{csv_path.name} line {row.line} says {key}={value.text}",
            )


def _same(config: Any, value: GridValue) -> bool:
    if _is_number(config) and value.number is not None:
        return math.isclose(float(config), value.number, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(config, bool):
        return value.text.lower() == str(config).lower()
    return str(config) == value.text


def _methods(rows: Iterable[Row]) -> tuple[str, ...]:
    present = list(dict.fromkeys(r.method for r in rows))
    return tuple(m for m in _PAPER_METHODS if m in present) + tuple(
        m for m in present if m not in _PAPER_METHODS
    )


def read_sweep(directory: Path) -> Sweep:
    """Read and validate ``directory/sweep.csv`` and every run's ``results.json``.

    Raises :class:`ReportError` (one line, naming the file) for a missing or malformed
    sweep.csv, a missing run directory or results.json, a run without the row's method,
    accuracies that disagree with the run by more than :data:`TOLERANCE`, or a run whose
    config contradicts the row's grid values.
    """
    directory = Path(directory)
    csv_path = directory / SWEEP_CSV
    keys, rows = _read_csv(csv_path)
    cells = _cells(csv_path, rows)
    runs: dict[str, dict[str, Any]] = {}
    for row in rows:
        path = directory / row.run / "results.json"
        if row.run not in runs:
            runs[row.run] = _load_json(path, row, csv_path)
        _check_run(path, runs[row.run], row, keys, csv_path)
    return Sweep(directory, tuple(keys), cells, _methods(rows), runs)


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
    return Stat.of([r.local_acc if split == "local" else r.global_acc for r in rows])


def _runs(sweep: Sweep, cell: Cell) -> list[dict[str, Any]]:
    """The cell's runs' results, one per seed, in seed order."""
    by_seed = {r.seed: r.run for r in cell.rows}
    return [sweep.runs[by_seed[s]] for s in sorted(by_seed)]


def gate_means(results: dict[str, Any], key: str = "gate") -> tuple[float, float] | None:
    """The gate's mean weight on the specialist over clients, on their majority-class
    and on their other local-test samples (NaN where no client has any); ``None`` when
    the run has no gate statistics. ``key``: ``gate`` (MoE) or ``gate_plus`` (MoE+)."""
    means = []
    for group in ("majority", "other"):
        values = _lookup(results, f"{key}.local_test.{group}")
        if not isinstance(values, list):
            return None
        present = [float(v) for v in values if _is_number(v)]
        means.append(statistics.fmean(present) if present else math.nan)
    return means[0], means[1]


# --------------------------------------------------------------------------- layout


def _canonical(key: str) -> str:
    return ALIASES.get(key, key)


def _axis_name(key: str) -> str:
    return _AXIS_NAMES.get(_canonical(key), key)


def _short(key: str, value: GridValue) -> str:
    return f"{key}={value.text}"


@dataclass(frozen=True)
class Layout:
    """How per-cell plots are arranged: ``primary`` (the x axis: ``p`` if it varies,
    else the first varying numeric key, else the first varying key, else none) and the
    other varying keys, one panel or line style per combination of their values."""

    primary: str | None
    secondary: tuple[str, ...]


def layout(sweep: Sweep) -> Layout:
    """The arrangement of the per-cell plots (see :class:`Layout`)."""
    varying = list(sweep.varying)
    numeric = [k for k in varying if all(v.number is not None for v in sweep.values(k))]
    ps = [k for k in varying if _canonical(k) == "partition.p"]
    candidates = ps or numeric or varying
    primary = candidates[0] if candidates else None
    return Layout(primary, tuple(k for k in varying if k != primary))


def _value(sweep: Sweep, cell: Cell, key: str) -> GridValue:
    return cell.grid[sweep.keys.index(key)]


def _combos(sweep: Sweep, keys: Sequence[str]) -> list[tuple[GridValue, ...]]:
    """The combinations of ``keys``' values present among the cells, sorted."""
    return sorted({tuple(_value(sweep, c, k) for k in keys) for c in sweep.cells})


def _describe(keys: Sequence[str], combo: Sequence[GridValue]) -> str:
    return ", ".join(_short(k, v) for k, v in zip(keys, combo, strict=True))


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)] or [items]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _file(stem: str, index: int, count: int) -> str:
    """The PNG name of figure ``index`` of ``count`` of one kind."""
    return f"{stem}.png" if count == 1 else f"{stem}-{index + 1}.png"


def _numbered(heading: str, index: int, count: int) -> str:
    return heading if count == 1 else f"{heading} ({index + 1}/{count})"


def _cell_label(sweep: Sweep, cell: Cell, key: str | None) -> str:
    return _short(key, _value(sweep, cell, key)) if key is not None else cell.name


def _panels(sweep: Sweep, lay: Layout) -> list[tuple[str, list[Cell]]]:
    """(title, cells ordered by the primary key) per combination of secondary values;
    a single panel (no secondary keys) has no title."""
    out = []
    for combo in _combos(sweep, lay.secondary):
        cells = [
            c for c in sweep.cells if tuple(_value(sweep, c, k) for k in lay.secondary) == combo
        ]
        out.append((_describe(lay.secondary, combo), cells))
    return out


# --------------------------------------------------------------------------- plots


@dataclass(frozen=True)
class Plot:
    """A written figure: its file under plots/, a heading and a caption."""

    file: str
    heading: str
    caption: str


@dataclass(frozen=True)
class Skipped:
    """A plot that does not apply to this sweep, and why."""

    heading: str
    reason: str


_SPREAD = "points are means over seeds, bars the standard deviation over seeds"


def _curve_plots(sweep: Sweep, out: Path) -> list[Plot | Skipped]:
    """Accuracy against every numeric varying grid key; p and opt_out are named as
    skipped when they do not vary."""
    found: list[Plot | Skipped] = []
    for short in ("p", "opt_out"):
        keys = [k for k in sweep.keys if _canonical(k) == ALIASES[short]]
        heading = f"Accuracy vs {short}"
        if not keys:
            found.append(Skipped(heading, f"`{short}` is not a grid key of this sweep"))
        elif keys[0] not in sweep.varying:
            value = sweep.values(keys[0])[0].text
            found.append(Skipped(heading, f"`{keys[0]}` has a single value ({value})"))
    for key in sweep.keys:
        if key not in sweep.varying:
            continue
        if any(v.number is None for v in sweep.values(key)):
            found.append(
                Skipped(f"Accuracy vs {key}", f"`{key}` values are not numbers; see the tables")
            )
            continue
        found.extend(_curves_for(sweep, key, out))
    return found


def _curves_for(sweep: Sweep, key: str, out: Path) -> list[Plot | Skipped]:
    others = [k for k in sweep.varying if k != key]
    combos = _combos(sweep, others)
    chunks = _chunks(combos, _PER_FIGURE)
    found: list[Plot | Skipped] = []
    for index, chunk in enumerate(chunks):
        panels = []
        for split, name in (("local", "local test"), ("global", "global test")):
            curves = [
                _curve(sweep, key, others, combo, style, method, split)
                for style, combo in enumerate(chunk)
                for method in sweep.methods
            ]
            panels.append((f"{name} set", [c for c in curves if c.x]))
        styles = [_describe(others, c) for c in chunk] if others else []
        file = _file(f"accuracy_vs_{_slug(key)}", index, len(chunks))
        title = f"Client-mean accuracy vs {_axis_name(key)}"
        plots.plot_curves(out / file, title, _axis_name(key), panels, sweep.methods, styles)
        styled = f"; line styles: {', '.join(styles)}" if styles else ""
        caption = (
            f"Client-mean accuracy against `{key}` on each client's own local test set "
            f"(left) and on the balanced global test set (right); {_SPREAD}{styled}."
        )
        found.append(Plot(file, _numbered(f"Accuracy vs {key}", index, len(chunks)), caption))
    return found


def _curve(
    sweep: Sweep,
    key: str,
    others: Sequence[str],
    combo: tuple[GridValue, ...],
    style: int,
    method: str,
    split: str,
) -> Curve:
    points = []
    for cell in sweep.cells:
        if tuple(_value(sweep, cell, k) for k in others) != combo:
            continue
        stat = accuracy(cell, method, split)
        number = _value(sweep, cell, key).number
        if stat.n and number is not None:
            points.append((number, 100 * stat.mean, 100 * stat.std))
    points.sort()
    return Curve(
        method,
        style,
        tuple(p[0] for p in points),
        tuple(p[1] for p in points),
        tuple(p[2] for p in points),
    )


def _scatter_plots(sweep: Sweep, out: Path) -> list[Plot | Skipped]:
    lay = layout(sweep)
    panels = _panels(sweep, lay)
    chunks = _chunks(panels, _PER_FIGURE)
    found: list[Plot | Skipped] = []
    for index, chunk in enumerate(chunks):
        drawn = []
        for title, cells in chunk:
            points = []
            for cell in cells:
                label = _scatter_label(sweep, cell, lay.primary)
                for method in sweep.methods:
                    loc, glo = accuracy(cell, method, "local"), accuracy(cell, method, "global")
                    if loc.n:
                        points.append(
                            ScatterPoint(
                                method,
                                label,
                                100 * glo.mean,
                                100 * loc.mean,
                                100 * glo.std,
                                100 * loc.std,
                            )
                        )
            drawn.append((title, points))
        file = _file("local_vs_global", index, len(chunks))
        plots.plot_local_vs_global(
            out / file, "Local-test vs global-test accuracy", drawn, sweep.methods
        )
        what = f"at one value of `{lay.primary}` (its label)" if lay.primary else "in the cell"
        caption = (
            f"Each point is one method {what}: x is the client-mean accuracy on the global "
            f"test set, y on the clients' local test sets; {_SPREAD}. Up and to the right "
            "is better; the dotted diagonal is local = global."
        )
        found.append(Plot(file, _numbered("Local vs global accuracy", index, len(chunks)), caption))
    return found


def _scatter_label(sweep: Sweep, cell: Cell, key: str | None) -> str:
    if key is None:
        p = _lookup(_runs(sweep, cell)[0].get("config"), "partition.p")
        return f"p={p}" if p is not None else cell.name
    return _cell_label(sweep, cell, key)


def _box_plots(sweep: Sweep, out: Path) -> list[Plot | Skipped]:
    lay = layout(sweep)
    chunks = _chunks(_panels(sweep, lay), _PER_FIGURE)
    found: list[Plot | Skipped] = []
    for index, chunk in enumerate(chunks):
        panels = []
        for title, cells in chunk:
            values = {m: tuple(tuple(_pooled(sweep, c, m)) for c in cells) for m in sweep.methods}
            groups = tuple(_cell_label(sweep, c, lay.primary) for c in cells)
            panels.append(BoxPanel(title, groups, values))
        file = _file("client_accuracy", index, len(chunks))
        xlabel = _axis_name(lay.primary) if lay.primary else "cell"
        plots.plot_boxes(
            out / file, "Per-client local-test accuracy", xlabel, panels, sweep.methods
        )
        caption = (
            "Each client's accuracy on its own local test set, pooled over seeds (one box "
            "per method and cell: quartiles, median line, whiskers to 1.5 IQR, outliers "
            "as circles)."
        )
        found.append(Plot(file, _numbered("Per-client accuracy", index, len(chunks)), caption))
    return found


def _pooled(sweep: Sweep, cell: Cell, method: str) -> list[float]:
    """Per-client local-test accuracies (percent) of every seed of the cell."""
    rows = [r for r in cell.rows if r.method == method]
    return [
        100 * a
        for r in rows
        for a in sweep.runs[r.run]["methods"][method]["local_test"]["per_client"]
    ]


#: (method, results.json key, display name, file stem) of each mixture's gate plot.
_GATES = (
    ("moe", "gate", "MoE", "gate"),
    ("moe-staged", "gate_staged", "MoE (staged)", "gate_staged"),
    ("moe-plus", "gate_plus", "MoE+", "gate_plus"),
    ("moe-ifca", "gate_ifca", "MoE+ IFCA", "gate_ifca"),
)


def _gate_plots(sweep: Sweep, out: Path) -> list[Plot | Skipped]:
    found: list[Plot | Skipped] = []
    for method, key, name, stem in _GATES:
        if method == "moe" or method in sweep.methods:
            found += _gate_plots_for(sweep, out, method, key, name, stem)
    return found


def _gate_plots_for(
    sweep: Sweep, out: Path, method: str, key: str, name: str, stem: str
) -> list[Plot | Skipped]:
    heading = f"{name} gate weight on the specialist"
    if method not in sweep.methods:
        return [Skipped(heading, f"the sweep has no {name} rows")]
    missing = [
        r.run for c in sweep.cells for r in c.rows if gate_means(sweep.runs[r.run], key) is None
    ]
    if missing:
        return [
            Skipped(
                heading,
                f"run `{missing[0]}` has no gate statistics (`{key}.local_test.majority` / "
                "`other`)",
            )
        ]
    lay = layout(sweep)
    chunks = _chunks(_panels(sweep, lay), _PER_FIGURE)
    found: list[Plot | Skipped] = []
    for index, chunk in enumerate(chunks):
        panels = [_gate_panel(sweep, title, cells, lay.primary, key) for title, cells in chunk]
        file = _file(stem, index, len(chunks))
        xlabel = _axis_name(lay.primary) if lay.primary else "cell"
        plots.plot_bars(
            out / file,
            f"{name} gate: mean weight on the specialist (local test)",
            xlabel,
            "mean gate weight g(x)",
            panels,
        )
        caption = (
            f"The {name} gate's mean weight g(x) on the specialist over each client's "
            "local-test samples of its majority classes and over its other samples, "
            "averaged over clients (those with such samples) and then over seeds; bars "
            "show the standard deviation over seeds; `none`: no client has such samples."
        )
        found.append(Plot(file, _numbered(heading, index, len(chunks)), caption))
    return found


def _gate_panel(
    sweep: Sweep, title: str, cells: Sequence[Cell], key: str | None, gate: str
) -> BarPanel:
    majority, other = [], []
    for cell in cells:
        means = [gate_means(r, gate) for r in _runs(sweep, cell)]
        pairs = [m for m in means if m is not None]
        majority.append(_stat_finite([m[0] for m in pairs]))
        other.append(_stat_finite([m[1] for m in pairs]))
    return BarPanel(
        title,
        tuple(_cell_label(sweep, c, key) for c in cells),
        ("majority-class samples", "other samples"),
        (tuple(s.mean for s in majority), tuple(s.mean for s in other)),
        (tuple(s.std for s in majority), tuple(s.std for s in other)),
    )


def _stat_finite(values: Sequence[float]) -> Stat:
    return Stat.of([v for v in values if not math.isnan(v)])


# --------------------------------------------------------------------------- markdown


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _percent(stat: Stat) -> str:
    if not stat.n:
        return "-"
    if stat.n == 1:
        return f"{100 * stat.mean:.1f}"
    return f"{100 * stat.mean:.1f} ± {100 * stat.std:.1f}"


def _seed_count(cell: Cell, methods: Sequence[str]) -> str:
    counts = sorted({len(cell.seeds(m)) for m in methods} - {0})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def accuracy_table(sweep: Sweep, split: str) -> str:
    """Markdown table: one row per cell (its grid values and seed count), one column per
    method, ``mean ± std`` over seeds in percent (one decimal; no ± for one seed); the
    best mean of a row in bold; ``n`` after an entry when its seed count differs."""
    keys = [_md(k) for k in sweep.keys] or ["cell"]
    head = [*keys, "seeds", *(method_label(m) for m in sweep.methods)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in sweep.cells:
        stats = [accuracy(cell, m, split) for m in sweep.methods]
        best = max((round(100 * s.mean, 1) for s in stats if s.n), default=None)
        seeds = _seed_count(cell, sweep.methods)
        entries = []
        for s in stats:
            text = _percent(s)
            if s.n and round(100 * s.mean, 1) == best:
                text = f"**{text}**"
            if s.n and str(s.n) != seeds:
                text += f" (n={s.n})"
            entries.append(text)
        grid = [_md(v.text) for v in cell.grid] or [_md(cell.name)]
        lines.append("| " + " | ".join([*grid, seeds, *entries]) + " |")
    return "\n".join(lines)


def _ablation_labels(sweep: Sweep) -> list[str]:
    labels: list[str] = []
    for results in sweep.runs.values():
        labels += [label for label in results.get("ablation", {}) if label not in labels]
    return labels


#: Rows the ablation table takes from other methods of the same runs.
_METHOD_ROWS = (
    ("moe-ifca", "the configured gate over the specialist, global and cluster (IFCA) models"),
    ("ifca", "no gate: the client's best IFCA cluster model"),
    ("moe", "paper MoE, joint schedule"),
    ("moe-staged", "paper MoE, staged schedule (gate alone, then joint)"),
)

#: A row's accuracy in a cell on a split (``local_test`` or ``global_test``) over seeds.
RowStat = Callable[[Sweep, Cell, str], Stat]


def _variant_stat(label: str) -> RowStat:
    def stat(sweep: Sweep, cell: Cell, split: str) -> Stat:
        entries = [r.get("ablation", {}).get(label) for r in _runs(sweep, cell)]
        return Stat.of([e[split]["mean"] for e in entries if e is not None])

    return stat


def _method_stat(method: str) -> RowStat:
    def stat(sweep: Sweep, cell: Cell, split: str) -> Stat:
        return accuracy(cell, method, split.removesuffix("_test"))

    return stat


def _ablation_rows(sweep: Sweep) -> list[tuple[str, RowStat]]:
    """The ablation table's rows: each gate variant, then the methods of
    :data:`_METHOD_ROWS` the sweep has; empty without gate variants."""
    labels = _ablation_labels(sweep)
    if not labels:
        return []
    rows = [(label, _variant_stat(label)) for label in labels]
    rows += [
        (f"{text} (`{method}`)", _method_stat(method))
        for method, text in _METHOD_ROWS
        if method in sweep.methods
    ]
    return rows


def ablation_table(sweep: Sweep, split: str) -> str:
    """Markdown table of the ``moe-plus`` ablation (runs with ``moe_plus.ablation``): one
    row per gate variant and per related method (:data:`_METHOD_ROWS`), one column per
    cell, client-mean accuracy in percent as mean ± std over seeds, the best row of each
    column in bold; empty without ablations."""
    rows = _ablation_rows(sweep)
    if not rows:
        return ""
    head = ["variant", *(_md(c.name) for c in sweep.cells)]
    table = [[_md(label)] for label, _ in rows]
    for cell in sweep.cells:
        stats = [stat(sweep, cell, split) for _, stat in rows]
        best = max((round(100 * s.mean, 1) for s in stats if s.n), default=None)
        for row, stat in zip(table, stats, strict=True):
            bold = stat.n and round(100 * stat.mean, 1) == best
            row.append(f"**{_percent(stat)}**" if bold else _percent(stat))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines)


def _ablation_section(sweep: Sweep) -> str:
    local = ablation_table(sweep, "local_test")
    if not local:
        return ""
    return (
        "## MoE+ ablation\n\n"
        "The gate of `moe-plus` with each of its options switched in turn (first row: the "
        "configured variant; then each option switched, then every option switched), "
        "then the related methods the runs have: the same gate over clustered global "
        "models, the best cluster model alone, and the paper's MoE with each schedule. "
        "Client-mean accuracy in percent, mean ± std over seeds; the best row of each "
        "column in bold.\n\n"
        f"### On each client's local test set\n\n{local}\n\n"
        f"### On the global test set\n\n{ablation_table(sweep, 'global_test')}\n\n"
    )


def _fmt(value: Any) -> str:
    return "?" if value is None else str(value)


def _config_lines(sweep: Sweep) -> list[str]:
    """The first run's dataset and configuration, and config keys that differ between
    runs other than the grid keys and the seed."""
    first = sweep.runs[sweep.cells[0].rows[0].run]
    cfg = first.get("config")
    if not isinstance(cfg, dict):
        return ["- Configuration: not recorded in the runs' results.json."]
    grid = {_canonical(k) for k in sweep.keys}

    def get(dotted: str) -> str:
        return "(grid)" if dotted in grid else _fmt(_lookup(cfg, dotted))

    ds = first.get("dataset") if isinstance(first.get("dataset"), dict) else {}
    assert isinstance(ds, dict)
    lines = [
        f"- Dataset: `{_fmt(ds.get('name', cfg.get('dataset')))}`"
        + (f" ({ds['source']})" if ds.get("source") else "")
        + f"; model `{_fmt(ds.get('model', cfg.get('model')))}`"
        + (f" ({ds['model_params']:,} parameters)" if _is_number(ds.get("model_params")) else ""),
        f"- Partition: scheme `{get('partition.scheme')}`, {get('partition.clients')} clients, "
        f"{get('partition.train')}/{get('partition.val')}/{get('partition.test')} "
        f"train/val/test samples each, p {get('partition.p')}, overlapping pairs "
        f"{get('partition.overlap')}, opt-out {get('partition.opt_out')}",
        f"- FedAvg: up to {get('fedavg.rounds')} rounds, {get('fedavg.clients_per_round')} "
        f"clients per round, {get('fedavg.local_epochs')} local epochs, batch "
        f"{get('fedavg.batch_size')}, {get('fedavg.optimizer')} lr {get('fedavg.lr')}, "
        f"early stopping {get('fedavg.early_stopping')}",
        f"- Personalisation: up to {get('personalise.epochs')} epochs, batch "
        f"{get('personalise.batch_size')}, {get('personalise.optimizer')} lr "
        f"{get('personalise.lr')} (MoE {get('personalise.moe_lr')}), mixture pool "
        f"`{get('personalise.pool')}`, specialist trained {get('personalise.train_specialist')}",
        f"- Device `{get('device')}`, {get('dtype')}; fedmoe {_fmt(first.get('fedmoe_version'))}",
    ]
    differ = _differing(sweep, grid | {"seed"})
    lines.append(
        "- Config entries that differ between runs besides the grid and the seed: "
        + (", ".join(f"`{k}`" for k in differ) if differ else "none")
    )
    return lines


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        flat.update(_flatten(v, f"{prefix}{k}" if not prefix else f"{prefix}.{k}"))
    return flat


def _differing(sweep: Sweep, ignore: set[str]) -> list[str]:
    """Config keys whose value differs between runs; a key missing from a run's config
    (written by a fedmoe that predates it) counts as its default."""
    defaults = _flatten(to_dict(ExperimentConfig()))
    flats = [defaults | _flatten(r.get("config", {})) for r in sweep.runs.values()]
    keys = sorted({k for f in flats for k in f} - ignore)
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


def _setup(sweep: Sweep) -> str:
    grid = [f"`{k}` ∈ {{{', '.join(v.text for v in sweep.values(k))}}}" for k in sweep.keys]
    runs = len(sweep.runs)
    seeds = ", ".join(str(s) for s in sweep.seeds)
    lines = [
        f"- Grid: {'; '.join(grid) if grid else 'none (a single cell)'} — "
        f"{len(sweep.cells)} cell(s), {runs} run(s)",
        f"- Seeds: {seeds}",
        f"- Methods: {', '.join(method_label(m) for m in sweep.methods)}",
        *_config_lines(sweep),
    ]
    return "\n".join(lines)


def _plots_section(found: Sequence[Plot | Skipped]) -> str:
    parts = []
    for item in found:
        if isinstance(item, Plot):
            parts.append(
                f"### {item.heading}\n\n![{item.heading}]({PLOTS_DIR}/{item.file})\n\n"
                f"{item.caption}\n"
            )
    skipped = [item for item in found if isinstance(item, Skipped)]
    if skipped:
        parts.append(
            "### Not plotted\n\n" + "\n".join(f"- {s.heading}: {s.reason}." for s in skipped) + "\n"
        )
    return "\n".join(parts)


def render(sweep: Sweep, found: Sequence[Plot | Skipped]) -> str:
    """The report's markdown, given the plots written (or skipped)."""
    return (
        f"# fedmoe sweep report: {_md(sweep.directory.resolve().name)}\n\n"
        "## Setup\n\n"
        f"{_setup(sweep)}\n\n"
        "## Accuracy\n\n"
        "Client-mean accuracy in percent: mean ± standard deviation over seeds (sample "
        "std, n-1; no ± with one seed); the best method of each row in bold.\n\n"
        "### On each client's local test set\n\n"
        f"{accuracy_table(sweep, 'local')}\n\n"
        "### On the global test set\n\n"
        f"{accuracy_table(sweep, 'global')}\n\n"
        f"{paired_section(sweep)}"
        f"{_ablation_section(sweep)}"
        "## Plots\n\n"
        f"{_plots_section(found)}"
    )


def write_report(directory: Path) -> Path:
    """Read the sweep in ``directory`` (see the module docstring), write
    ``directory/report.md`` and its PNG plots under ``directory/plots/``, and return the
    report's path. Raises :class:`ReportError` for bad input (before writing anything)
    and :class:`~fedmoe.errors.FedmoeError` when a file cannot be written."""
    sweep = read_sweep(Path(directory))
    out = sweep.directory / PLOTS_DIR
    found: list[Plot | Skipped] = []
    for make in (_curve_plots, _scatter_plots, _box_plots, _gate_plots):
        found.extend(make(sweep, out))
    report = sweep.directory / REPORT_MD
    try:
        report.write_text(render(sweep, found), encoding="utf-8")
    except OSError as exc:
        raise FedmoeError(f"{report}: cannot write the report ({exc.strerror or exc})") from None
    return report
