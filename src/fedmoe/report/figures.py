"""The sweep report's figures: which plots apply to a sweep, and writing them as PNG
(:mod:`fedmoe.report.plots` draws them). Every method of the sweep is drawn, with its
label from the runs' results.json; every mixture (a method with ``gate`` statistics)
gets its gate plot."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmoe.report import plots
from fedmoe.report.leaderboard import cell_title
from fedmoe.report.plots import BarPanel, BoxPanel, Curve, FrontierPanel, Methods, ScatterPoint
from fedmoe.sweep.format import ALIASES
from fedmoe.sweep.reader import (
    Cell,
    GridValue,
    Stat,
    Sweep,
    accuracy,
    canonical,
    gate_means,
    lookup,
    runs_of,
)

_AXIS_NAMES = {
    "partition.p": "majority-class fraction p",
    "partition.opt_out": "opt-out fraction",
    "partition.alpha": "Dirichlet alpha",
}
#: At most this many series (line styles) or panels in one figure; more go to more files.
_PER_FIGURE = 4


# --------------------------------------------------------------------------- layout


def _axis_name(key: str) -> str:
    return _AXIS_NAMES.get(canonical(key), key)


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
    ps = [k for k in varying if canonical(k) == "partition.p"]
    candidates = ps or numeric or varying
    primary = candidates[0] if candidates else None
    return Layout(primary, tuple(k for k in varying if k != primary))


def _methods(sweep: Sweep) -> Methods:
    """The sweep's methods and labels, for the drawing functions."""
    return Methods(sweep.methods, tuple(sweep.label(m) for m in sweep.methods))


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


def _tick(sweep: Sweep, cell: Cell, key: str | None) -> str:
    """A cell's label on an axis that names ``key``: its value alone."""
    return _value(sweep, cell, key).text if key is not None else cell.name


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
        keys = [k for k in sweep.keys if canonical(k) == ALIASES[short]]
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
        plots.plot_curves(out / file, title, _axis_name(key), panels, _methods(sweep), styles)
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


def _points(sweep: Sweep, cell: Cell, label: str | None = None) -> list[ScatterPoint]:
    """Each method of ``cell`` with runs as a point: x global-test, y local-test accuracy
    (percent, mean and std over seeds), labelled ``label`` (default: the method's)."""
    points = []
    for method in sweep.methods:
        loc, glo = accuracy(cell, method, "local"), accuracy(cell, method, "global")
        if loc.n:
            points.append(
                ScatterPoint(
                    method,
                    label or sweep.label(method),
                    100 * glo.mean,
                    100 * loc.mean,
                    100 * glo.std,
                    100 * loc.std,
                )
            )
    return points


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
                points.extend(_points(sweep, cell, label))
            drawn.append((title, points))
        file = _file("local_vs_global", index, len(chunks))
        plots.plot_local_vs_global(
            out / file, "Local-test vs global-test accuracy", drawn, _methods(sweep)
        )
        what = f"at one value of `{lay.primary}` (its label)" if lay.primary else "in the cell"
        caption = (
            f"Each point is one method {what}: x is the client-mean accuracy on the global "
            f"test set, y on the clients' local test sets; {_SPREAD}. Up and to the right "
            "is better; the dotted diagonal is local = global."
        )
        found.append(Plot(file, _numbered("Local vs global accuracy", index, len(chunks)), caption))
    return found


#: The share of FedAvg's global-test accuracy a personalised model should keep.
GLOBAL_FLOOR = 0.9


def _frontier_plots(sweep: Sweep, out: Path) -> list[Plot | Skipped]:
    chunks = _chunks(list(sweep.cells), _PER_FIGURE)
    found: list[Plot | Skipped] = []
    for index, chunk in enumerate(chunks):
        panels = []
        for cell in chunk:
            points = tuple(_points(sweep, cell))
            fedavg = accuracy(cell, "fedavg", "global") if "fedavg" in sweep.methods else None
            floor = 100 * GLOBAL_FLOOR * fedavg.mean if fedavg and fedavg.n else math.nan
            name = f"{GLOBAL_FLOOR} x FedAvg's global-test accuracy"
            panels.append(FrontierPanel(cell_title(sweep, cell), points, floor, name))
        file = _file("frontier", index, len(chunks))
        plots.plot_frontiers(out / file, "Local-vs-global frontier", panels, _methods(sweep))
        caption = (
            f"One panel per cell, each method a point ({_SPREAD}): x global-test, y local-test "
            "accuracy. The dashed line joins the frontier (the methods no other method beats on "
            f"both), listed in the lower left; the dotted line is {GLOBAL_FLOOR} x FedAvg's "
            "global-test accuracy. "
            f"Methods left of a gap of more than {plots.FRONTIER_GAP:g} global-test points "
            "are named in the upper left, not drawn."
        )
        found.append(Plot(file, _numbered("Local-vs-global frontier", index, len(chunks)), caption))
    return found


def _scatter_label(sweep: Sweep, cell: Cell, key: str | None) -> str:
    if key is None:
        p = lookup(runs_of(sweep, cell)[0].get("config"), "partition.p")
        return f"p={p}" if p is not None else cell.name
    # The key's last part: point labels sit in the plot, where long keys collide.
    return f"{key.rsplit('.', 1)[-1]}={_value(sweep, cell, key).text}"


def _box_plots(sweep: Sweep, out: Path) -> list[Plot | Skipped]:
    lay = layout(sweep)
    chunks = _chunks(_panels(sweep, lay), _PER_FIGURE)
    found: list[Plot | Skipped] = []
    for index, chunk in enumerate(chunks):
        panels = []
        for title, cells in chunk:
            values = {m: tuple(tuple(_pooled(sweep, c, m)) for c in cells) for m in sweep.methods}
            groups = tuple(_tick(sweep, c, lay.primary) for c in cells)
            panels.append(BoxPanel(title, groups, values))
        file = _file("client_accuracy", index, len(chunks))
        xlabel = _axis_name(lay.primary) if lay.primary else "cell"
        plots.plot_boxes(
            out / file, "Per-client local-test accuracy", xlabel, panels, _methods(sweep)
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


def _gate_plots(sweep: Sweep, out: Path) -> list[Plot | Skipped]:
    """One gate plot per mixture of the sweep, in method order (``gate_<method>.png``);
    a note when the sweep has none."""
    if not sweep.mixtures:
        return [Skipped("Gate weight on the specialist", "no method of the sweep has a gate")]
    found: list[Plot | Skipped] = []
    for method in sweep.mixtures:
        found += _gate_plots_for(sweep, out, method)
    return found


def _gate_plots_for(sweep: Sweep, out: Path, method: str) -> list[Plot | Skipped]:
    name = sweep.label(method)
    heading = f"{name} gate weight on the specialist"
    missing = [
        r.run
        for c in sweep.cells
        for r in c.rows
        if r.method == method and gate_means(sweep.runs[r.run], method) is None
    ]
    if missing:
        return [
            Skipped(
                heading,
                f"run `{missing[0]}` has no gate statistics "
                f"(`methods.{method}.gate.local_test.majority` / `other`)",
            )
        ]
    lay = layout(sweep)
    chunks = _chunks(_panels(sweep, lay), _PER_FIGURE)
    found: list[Plot | Skipped] = []
    for index, chunk in enumerate(chunks):
        panels = [_gate_panel(sweep, title, cells, lay.primary, method) for title, cells in chunk]
        file = _file(f"gate_{_slug(method)}", index, len(chunks))
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
            "local-test samples of its majority classes and over its other samples (all "
            "its samples where the partition names no majority classes, as Dirichlet's "
            "does not), averaged over clients (those with such samples) and then over "
            "seeds; bars show the standard deviation over seeds; `none`: no client has "
            "such samples."
        )
        found.append(Plot(file, _numbered(heading, index, len(chunks)), caption))
    return found


def _gate_panel(
    sweep: Sweep, title: str, cells: Sequence[Cell], key: str | None, method: str
) -> BarPanel:
    majority, other = [], []
    for cell in cells:
        means = [gate_means(r, method) for r in runs_of(sweep, cell, method)]
        pairs = [m for m in means if m is not None]
        majority.append(_stat_finite([m[0] for m in pairs]))
        other.append(_stat_finite([m[1] for m in pairs]))
    ticks = tuple(_tick(sweep, c, key) for c in cells)
    if all(not s.n for s in majority):  # no majority classes: every sample is "other"
        return BarPanel(
            title,
            ticks,
            ("all samples",),
            (tuple(s.mean for s in other),),
            (tuple(s.std for s in other),),
        )
    return BarPanel(
        title,
        ticks,
        ("majority-class samples", "other samples"),
        (tuple(s.mean for s in majority), tuple(s.mean for s in other)),
        (tuple(s.std for s in majority), tuple(s.std for s in other)),
    )


def _stat_finite(values: Sequence[float]) -> Stat:
    return Stat.of([v for v in values if not math.isnan(v)])


def write_plots(sweep: Sweep, out: Path) -> list[Plot | Skipped]:
    """Write every plot that applies to ``sweep`` under ``out``; the written ones and
    the skipped ones (with the reason), in report order."""
    found: list[Plot | Skipped] = []
    for make in (_curve_plots, _scatter_plots, _frontier_plots, _box_plots, _gate_plots):
        found.extend(make(sweep, out))
    return found
