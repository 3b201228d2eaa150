"""A sweep's plots as PNG files: accuracy curves, local-vs-global scatter, per-client
box plots and the gate's weight on the specialist.

Rendering only: every function takes plain numbers and a path and knows nothing about
sweep files (:mod:`fedmoe.report.figures` gathers the numbers). Methods are given as
:class:`Methods`: their names in report order and their display names; each gets the
colour and marker of its position in that order (:data:`PALETTE`). Accuracies are in
percent, gate weights in [0, 1]; NaN means "no value" and is drawn as nothing. Uses
matplotlib's object API with the Agg canvas (no pyplot, no global state), so it works
headless and from worker threads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from fedmoe.errors import FedmoeError

__all__ = [
    "LINESTYLES",
    "PALETTE",
    "BarPanel",
    "BoxPanel",
    "Curve",
    "FrontierPanel",
    "Methods",
    "ScatterPoint",
    "frontier",
    "plot_bars",
    "plot_boxes",
    "plot_curves",
    "plot_frontiers",
    "plot_local_vs_global",
]

#: (colour, marker) of the first ten methods in report order; the next tens keep the
#: colours and shift the markers (:meth:`Methods.style`), so up to 100 methods differ.
PALETTE = (
    ("tab:blue", "s"),
    ("tab:orange", "^"),
    ("tab:green", "D"),
    ("tab:red", "o"),
    ("tab:purple", "v"),
    ("tab:brown", "P"),
    ("tab:pink", "X"),
    ("tab:olive", "<"),
    ("tab:cyan", ">"),
    ("tab:gray", "*"),
)
#: Line styles that tell apart up to four series of the same method in one figure.
LINESTYLES: tuple[Literal["-", "--", ":", "-."], ...] = ("-", "--", ":", "-.")
_BAR_COLORS = ("tab:red", "tab:gray", "tab:blue", "tab:green")
_DPI = 120


@dataclass(frozen=True)
class Methods:
    """The methods of a figure: ``names`` in report order, ``labels`` their display
    names (same length)."""

    names: tuple[str, ...]
    labels: tuple[str, ...]

    def style(self, method: str) -> tuple[str, str]:
        """(colour, marker) of a method: its position ``i``'s colour in :data:`PALETTE`
        (``i mod 10``) and the marker ``i // 10`` places further, so no two of the first
        100 methods look the same."""
        i, n = self.names.index(method), len(PALETTE)
        return PALETTE[i % n][0], PALETTE[(i + i // n) % n][1]


def _method_handles(methods: Methods, line: bool) -> list[Line2D]:
    handles = []
    for m in methods.names:
        color, marker = methods.style(m)
        handles.append(
            Line2D([], [], color=color, marker=marker, linestyle="-" if line else "none")
        )
    return handles


def _figure(panels: int, width: float, height: float, ncols: int) -> tuple[Figure, list[Axes]]:
    """A figure with ``panels`` axes of about ``width`` x ``height`` inches each."""
    ncols = max(1, min(ncols, panels))
    nrows = math.ceil(panels / ncols)
    figure = Figure(figsize=(width * ncols, height * nrows + 0.6), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(nrows, ncols, squeeze=False)
    axes = [a for row in grid for a in row]
    for extra in axes[panels:]:
        extra.set_visible(False)
    return figure, axes[:panels]


def _save(figure: Figure, path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # "tight": a legend wider than the panels (many methods) is not cut off.
        figure.savefig(path, format="png", bbox_inches="tight")
    except OSError as exc:
        raise FedmoeError(f"{path}: cannot write the plot ({exc.strerror or exc})") from None
    return path


def _finite(values: Sequence[float]) -> list[float]:
    return [0.0 if math.isnan(v) else v for v in values]


@dataclass(frozen=True)
class Curve:
    """One method's accuracy (percent) against a grid key: mean and spread over seeds at
    each ``x``; ``style`` indexes :data:`LINESTYLES` (which series of the method it is)."""

    method: str
    style: int
    x: tuple[float, ...]
    y: tuple[float, ...]
    err: tuple[float, ...]


def log_axis(xs: Sequence[float]) -> bool:
    """Whether values ``xs`` (sorted) go on a log axis: positive and over more than a
    decade (learning rates, say)."""
    return len(xs) > 1 and xs[0] > 0 and xs[-1] / xs[0] > 10


#: The least gap between labelled x ticks, as a share of the axis span.
TICK_GAP = 0.08


def tick_labels(xs: Sequence[float], log: bool) -> list[str]:
    """Labels for ticks at ``xs`` (sorted): each value, but blank where it would sit
    closer than :data:`TICK_GAP` of the axis to the last labelled tick (0 and 0.01 on
    an axis to 0.2, say), so labels never overlap."""
    at = [math.log(x) for x in xs] if log else list(xs)
    span = (at[-1] - at[0]) if len(at) > 1 else 1.0
    labels, last = [], -math.inf
    for x, position in zip(xs, at, strict=True):
        keep = position - last >= TICK_GAP * span
        labels.append(f"{x:g}" if keep else "")
        last = position if keep else last
    return labels


def plot_curves(
    path: Path,
    title: str,
    xlabel: str,
    panels: Sequence[tuple[str, Sequence[Curve]]],
    methods: Methods,
    style_labels: Sequence[str] = (),
) -> Path:
    """Write side-by-side panels ``(panel title, curves)`` of accuracy (percent) against
    ``xlabel``, one colour and marker per method, error bars from ``Curve.err``.
    ``style_labels[i]`` names line style ``i`` in a second legend (none when empty)."""
    figure, axes = _figure(len(panels), 5.2, 4.0, ncols=len(panels))
    xs = sorted({x for _, curves in panels for c in curves for x in c.x})
    log = log_axis(xs)
    # Methods are nudged apart along x (by 1 % of the range, or a factor of 1.01 on a log
    # axis) so error bars stay apart.
    nudge = 0.01 * (math.log(xs[-1] / xs[0]) if log else xs[-1] - xs[0] if len(xs) > 1 else 1.0)
    for ax, (panel_title, curves) in zip(axes, panels, strict=True):
        if log:
            ax.set_xscale("log")
            ax.minorticks_off()
        for c in curves:
            color, marker = methods.style(c.method)
            shift = (methods.names.index(c.method) - (len(methods.names) - 1) / 2) * nudge
            ax.errorbar(
                [x * math.exp(shift) if log else x + shift for x in c.x],
                c.y,
                yerr=_finite(c.err),
                color=color,
                marker=marker,
                linestyle=LINESTYLES[c.style % len(LINESTYLES)],
                capsize=3,
                markersize=5,
                linewidth=1.5,
            )
        ax.set_title(panel_title, fontsize=11)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.set_xticks(xs, tick_labels(xs, log))
        ax.grid(alpha=0.3)
    handles: list[Line2D] = _method_handles(methods, line=True)
    labels = list(methods.labels)
    for i, name in enumerate(style_labels):
        handles.append(Line2D([], [], color="black", linestyle=LINESTYLES[i % len(LINESTYLES)]))
        labels.append(name)
    _legend(figure, handles, labels, 8)
    figure.suptitle(title, fontsize=12)
    return _save(figure, path)


@dataclass(frozen=True)
class ScatterPoint:
    """One method in one cell: global-test (x) and local-test (y) accuracy in percent,
    means over seeds with their spreads; ``label`` annotates the point (e.g. ``p=0.8``)."""

    method: str
    label: str
    x: float
    y: float
    xerr: float
    yerr: float


def _annotate(ax: Axes, points: Sequence[ScatterPoint], near: tuple[float, float]) -> None:
    """Label the points. A point closer than ``near`` (x, y) to a labelled point, or
    closer than twice that to one with only its own label, shares that label (labels
    of one place are joined: ``p=0.2, p=0.5``), so
    that nearly coinciding methods do not print on top of each other."""
    clusters: list[tuple[float, float, list[str]]] = []
    for p in points:
        for x, y, labels in clusters:
            reach = 2.0 if labels == [p.label] else 1.0
            if abs(x - p.x) < reach * near[0] and abs(y - p.y) < reach * near[1]:
                if p.label not in labels:
                    labels.append(p.label)
                break
        else:
            clusters.append((p.x, p.y, [p.label]))
    for x, y, labels in clusters:
        ax.annotate(
            ", ".join(labels),
            (x, y),
            xytext=(7, 4),
            textcoords="offset points",
            fontsize=7.5,
            color="0.15",
        )


def plot_local_vs_global(
    path: Path,
    title: str,
    panels: Sequence[tuple[str, Sequence[ScatterPoint]]],
    methods: Methods,
) -> Path:
    """Write panels ``(panel title, points)`` of local-test against global-test accuracy;
    a method's points are joined in the order given, and the diagonal marks local =
    global. Every panel has the same axis limits, so that panels compare at a glance."""
    figure, axes = _figure(len(panels), 6.4, 5.2, ncols=2)
    every = [p for _, pts in panels for p in pts]
    xlim = _range([v for p in every for v in _span(p.x, p.xerr)])
    ylim = _range([v for p in every for v in _span(p.y, p.yerr)])
    near = (0.025 * (xlim[1] - xlim[0]), 0.025 * (ylim[1] - ylim[0]))
    diagonal = (max(xlim[0], ylim[0]), min(xlim[1], ylim[1]))
    for ax, (panel_title, points) in zip(axes, panels, strict=True):
        ax.plot(diagonal, diagonal, color="gray", linestyle=":", linewidth=1)
        for m in methods.names:
            own = [p for p in points if p.method == m]
            if not own:
                continue
            color, marker = methods.style(m)
            ax.errorbar(
                [p.x for p in own],
                [p.y for p in own],
                xerr=_finite([p.xerr for p in own]),
                yerr=_finite([p.yerr for p in own]),
                color=color,
                marker=marker,
                linestyle="-",
                linewidth=0.8,
                alpha=0.9,
                capsize=2,
                markersize=6,
            )
        _annotate(ax, points, near)
        _local_vs_global_axes(ax, panel_title, xlim, ylim)
    _legend(figure, _method_handles(methods, line=False), list(methods.labels))
    figure.suptitle(title, fontsize=12)
    return _save(figure, path)


def _local_vs_global_axes(
    ax: Axes, title: str, xlim: tuple[float, float], ylim: tuple[float, float]
) -> None:
    """Limits, title, labels and grid of a panel of local- against global-test accuracy."""
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("global-test accuracy (%)")
    ax.set_ylabel("local-test accuracy (%)")
    ax.grid(alpha=0.3)


@dataclass(frozen=True)
class FrontierPanel:
    """One setting: its methods as points (``x`` global-test, ``y`` local-test accuracy,
    ``label`` the method's display name) and ``floor``, the global-test accuracy a
    personalised model should keep (NaN for none), named ``floor_label``."""

    title: str
    points: tuple[ScatterPoint, ...]
    floor: float
    floor_label: str = ""


#: A frontier panel leaves out the points left of a gap wider than this many
#: global-test points (walking from the best leftwards): a purely local model, say, far
#: from the rest, is named in its corner instead, so that it does not squeeze the
#: others into one.
FRONTIER_GAP = 15.0


def _far_left(points: Sequence[ScatterPoint], gap: float = FRONTIER_GAP) -> list[ScatterPoint]:
    """The points left of the first gap wider than ``gap`` in ``x``, from the right."""
    ordered = sorted(points, key=lambda p: -p.x)
    for i in range(1, len(ordered)):
        if ordered[i - 1].x - ordered[i].x > gap:
            return ordered[i:]
    return []


def frontier(points: Sequence[ScatterPoint]) -> list[ScatterPoint]:
    """The points that no other point beats on both accuracies (ties kept), by ``x``."""
    ahead = [
        p
        for p in points
        if not any(q.x >= p.x and q.y >= p.y and (q.x > p.x or q.y > p.y) for q in points)
    ]
    return sorted(ahead, key=lambda p: (p.x, -p.y))


def plot_frontiers(
    path: Path, title: str, panels: Sequence[FrontierPanel], methods: Methods
) -> Path:
    """Write one panel per setting of local-test against global-test accuracy: every
    method a point, the local-vs-global frontier (:func:`frontier`) joined and named,
    the panel's ``floor`` a dotted vertical line. Each panel has its own limits
    (settings differ in difficulty); see :data:`FRONTIER_GAP` for points left out."""
    figure, axes = _figure(len(panels), 6.4, 5.2, ncols=2)
    for ax, panel in zip(axes, panels, strict=True):
        finite = [p for p in panel.points if math.isfinite(p.x) and math.isfinite(p.y)]
        left = _far_left(finite)
        shown = [p for p in finite if p not in left]
        for p in shown:
            color, marker = methods.style(p.method)
            ax.errorbar(
                [p.x],
                [p.y],
                xerr=_finite([p.xerr]),
                yerr=_finite([p.yerr]),
                color=color,
                marker=marker,
                capsize=2,
                markersize=7,
                alpha=0.9,
            )
        edge = frontier(shown)
        ax.plot([p.x for p in edge], [p.y for p in edge], color="0.3", linestyle="--", lw=0.9)
        # Named in a corner, best local accuracy first: labels at close points collide.
        names = "\n".join(p.label for p in edge)
        ax.text(0.01, 0.01, f"frontier:\n{names}", transform=ax.transAxes, fontsize=7.5)
        xlim = _range([v for p in shown for v in _span(p.x, p.xerr)], margin=1.0)
        ylim = _range([v for p in shown for v in _span(p.y, p.yerr)], margin=1.0)
        if math.isfinite(panel.floor):
            xlim = (min(xlim[0], panel.floor - 1.0), xlim[1])
            ax.axvline(panel.floor, color="tab:red", linestyle=":", linewidth=1)
            ax.text(
                panel.floor,
                sum(ylim) / 2,
                f" {panel.floor_label}",
                rotation=90,
                va="center",
                fontsize=7.5,
                color="tab:red",
            )
        if left:
            off = ", ".join(f"{p.label} ({p.x:.1f}, {p.y:.1f})" for p in left)
            ax.text(
                0.01,
                0.99,
                f"off the panel, left: {off}",
                transform=ax.transAxes,
                fontsize=7,
                va="top",
                color="0.3",
            )
        _local_vs_global_axes(ax, panel.title, xlim, ylim)
    _legend(figure, _method_handles(methods, line=False), list(methods.labels))
    figure.suptitle(title, fontsize=12)
    return _save(figure, path)


def _legend(figure: Figure, handles: Sequence[Artist], labels: list[str], columns: int = 4) -> None:
    """The figure's legend below the panels, in rows of at most ``columns`` entries."""
    figure.legend(
        handles, labels, loc="outside lower center", ncols=min(len(labels), columns), frameon=False
    )


def _span(value: float, err: float) -> tuple[float, float]:
    spread = 0.0 if math.isnan(err) else err
    return value - spread, value + spread


def _range(values: Sequence[float], margin: float = 3.0) -> tuple[float, float]:
    """Axis limits (percent) that hold every value with a margin (at least ``margin``
    points, 8% of the range), within [0, 100]."""
    finite = [v for v in values if math.isfinite(v)] or [0.0, 100.0]
    lo, hi = min(finite), max(finite)
    margin = max(margin, 0.08 * (hi - lo))
    return max(0.0, lo - margin), min(100.0, hi + margin)


@dataclass(frozen=True)
class BoxPanel:
    """Per-client accuracies (percent) to draw as boxes: ``values[method][g]`` is the
    pooled list for group ``groups[g]`` (a list may be empty)."""

    title: str
    groups: tuple[str, ...]
    values: dict[str, tuple[tuple[float, ...], ...]]


def plot_boxes(
    path: Path, title: str, xlabel: str, panels: Sequence[BoxPanel], methods: Methods
) -> Path:
    """Write panels (stacked) of box plots, one box per (group, method), methods side by
    side within a group, coloured as in the other plots."""
    groups = max(len(p.groups) for p in panels)
    width = min(max(6.0, 1.0 + 0.45 * groups * len(methods.names)), 22.0)
    figure, axes = _figure(len(panels), width, 3.6, ncols=1)
    step = 0.8 / len(methods.names)
    for ax, panel in zip(axes, panels, strict=True):
        for i, m in enumerate(methods.names):
            color, _ = methods.style(m)
            series = panel.values.get(m, ())
            keep = [g for g, v in enumerate(series) if v]
            if not keep:
                continue
            boxes = ax.boxplot(
                [list(series[g]) for g in keep],
                positions=[g - 0.4 + step * (i + 0.5) for g in keep],
                widths=step * 0.8,
                patch_artist=True,
                manage_ticks=False,
                flierprops={"marker": "o", "markersize": 3, "markeredgecolor": color},
                medianprops={"color": "black"},
            )
            for box in boxes["boxes"]:
                box.set_facecolor(color)
                box.set_alpha(0.6)
        ax.set_xticks(range(len(panel.groups)), panel.groups)
        ax.set_xlim(-0.6, len(panel.groups) - 0.4)
        ax.set_title(panel.title, fontsize=11)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("local-test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor=methods.style(m)[0], alpha=0.6) for m in methods.names]
    _legend(figure, handles, list(methods.labels))
    figure.suptitle(title, fontsize=12)
    return _save(figure, path)


@dataclass(frozen=True)
class BarPanel:
    """Grouped bars: ``values[b][g]`` and ``errors[b][g]`` for bar ``bars[b]`` in group
    ``groups[g]``; NaN values are drawn as a "none" mark, NaN errors as no error bar."""

    title: str
    groups: tuple[str, ...]
    bars: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]
    errors: tuple[tuple[float, ...], ...]


def plot_bars(path: Path, title: str, xlabel: str, ylabel: str, panels: Sequence[BarPanel]) -> Path:
    """Write panels (stacked) of grouped bars on a [0, 1] value axis."""
    groups = max(len(p.groups) for p in panels)
    width = min(max(6.0, 1.5 + 0.9 * groups), 22.0)
    figure, axes = _figure(len(panels), width, 3.4, ncols=1)
    for ax, panel in zip(axes, panels, strict=True):
        step = 0.8 / len(panel.bars)
        for b, (values, errors) in enumerate(zip(panel.values, panel.errors, strict=True)):
            xs = [g - 0.4 + step * (b + 0.5) for g in range(len(panel.groups))]
            color = _BAR_COLORS[b % len(_BAR_COLORS)]
            drawn = [i for i, v in enumerate(values) if not math.isnan(v)]
            bars = ax.bar(
                [xs[i] for i in drawn],
                [values[i] for i in drawn],
                width=step * 0.9,
                yerr=[_finite(errors)[i] for i in drawn],
                capsize=3,
                color=color,
                alpha=0.75,
                label=panel.bars[b],
            )
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
            for x, v in zip(xs, values, strict=True):
                if math.isnan(v):
                    ax.text(x, 0.02, "none", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(panel.groups)), panel.groups)
        ax.set_xlim(-0.6, len(panel.groups) - 0.4)
        ax.set_ylim(0.0, 1.22)
        ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_title(panel.title, fontsize=11)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper center", ncols=len(panel.bars), fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=12)
    return _save(figure, path)
