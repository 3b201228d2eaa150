"""One run's plots, drawn from its results.json entries alone (format 2): every
method's local- and global-test accuracy, the per-client distributions, and each
mixture's gate weight on its specialist. ``fedmoe run --out DIR`` writes them into
``DIR/plots/``; any method, built-in or yours, appears by its entry's label."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SPLITS = (("local_test", "local test"), ("global_test", "global test"))
_COLOURS = ("tab:red", "tab:blue")
_DPI = 120


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    return path


def _labels(methods: dict[str, Any]) -> list[str]:
    return [entry.get("label", name) for name, entry in methods.items()]


def plot_accuracy(results: dict[str, Any], path: Path) -> Path:
    """Client-mean accuracy (%) per method, local and global test side by side, with
    the std over clients as error bars."""
    methods = results["methods"]
    fig = Figure(figsize=(max(5.0, 1.1 * len(methods) + 2), 3.8))
    ax: Axes = fig.add_subplot()
    width = 0.38
    for j, ((split, text), colour) in enumerate(zip(SPLITS, _COLOURS, strict=True)):
        xs = [i + (j - 0.5) * width for i in range(len(methods))]
        means = [100 * m[split]["mean"] for m in methods.values()]
        stds = [100 * m[split]["std"] for m in methods.values()]
        ax.bar(xs, means, width, yerr=stds, color=colour, alpha=0.8, label=text, capsize=2)
    ax.set_xticks(range(len(methods)), _labels(methods), rotation=30, ha="right")
    ax.set_ylabel("accuracy % (mean ± std over clients)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.set_title("Accuracy per method")
    return _save(fig, path)


def plot_clients(results: dict[str, Any], path: Path) -> Path:
    """Each method's per-client accuracies (%) on both test sets, as box plots."""
    methods = results["methods"]
    fig = Figure(figsize=(max(5.0, 1.1 * len(methods) + 2), 6.4))
    for row, (split, text) in enumerate(SPLITS):
        ax: Axes = fig.add_subplot(2, 1, row + 1)
        data = [[100 * a for a in m[split]["per_client"]] for m in methods.values()]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(methods) + 1), _labels(methods), rotation=30, ha="right")
        ax.set_ylabel(f"{text} accuracy %")
        ax.set_ylim(0, 100)
    fig.suptitle("Per-client accuracy")
    return _save(fig, path)


def _mean(values: list[float | None]) -> float:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else math.nan


def plot_gates(results: dict[str, Any], path: Path) -> Path | None:
    """Each mixture's mean gate weight on its specialist, on samples of the client's
    majority classes and on the others (local and global test); ``None`` when the run
    has no mixture."""
    mixtures = {n: m for n, m in results["methods"].items() if "gate" in m}
    if not mixtures:
        return None
    fig = Figure(figsize=(max(5.0, 1.4 * len(mixtures) + 2), 3.8))
    ax: Axes = fig.add_subplot()
    groups = [(s, g) for s, _ in SPLITS for g in ("majority", "other")]
    width = 0.8 / len(groups)
    for j, (split, group) in enumerate(groups):
        xs = [i + (j - (len(groups) - 1) / 2) * width for i in range(len(mixtures))]
        heights = [_mean(m["gate"][split][group]) for m in mixtures.values()]
        text = f"{split.replace('_', ' ')}, {group}"
        ax.bar(xs, heights, width, label=text, alpha=0.85)
    ax.set_xticks(range(len(mixtures)), _labels(mixtures), rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("weight on the specialist (mean)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.set_title("Gate weight on the specialist")
    return _save(fig, path)


def write_run_plots(results: dict[str, Any], directory: Path) -> list[Path]:
    """Write the run's plots into ``directory`` (created); returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [
        plot_accuracy(results, directory / "accuracy.png"),
        plot_clients(results, directory / "clients.png"),
    ]
    gates = plot_gates(results, directory / "gate.png")
    return written + ([gates] if gates is not None else [])
