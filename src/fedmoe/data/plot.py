"""A picture of a partition: train label counts as a clients x classes heat map.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global state), so it
works headless and from worker threads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedmoe.data.partition import Partition, split_label_counts
from fedmoe.errors import DataError

__all__ = ["plot_partition"]


def _describe(partition: Partition) -> str:
    skip = {"scheme", "num_clients", "n_train", "n_val", "n_test"}
    shown = [f"{key}={value}" for key, value in partition.params.items() if key not in skip]
    return ", ".join(shown)


def plot_partition(
    partition: Partition, y_train: npt.ArrayLike, num_classes: int, path: str | Path
) -> Path:
    """Write a PNG heat map of every client's train label counts to ``path``.

    Columns are clients, rows are classes, colour is the number of train samples;
    opted-out clients are marked with a tick under the axis. Readable up to a few
    hundred clients and classes. Creates missing parent directories; returns the path.
    """
    counts = split_label_counts(partition, "train", y_train, num_classes)
    num_clients = partition.num_clients
    width = min(max(6.0, 2.5 + 0.1 * num_clients), 24.0)
    height = min(max(3.5, 1.5 + 0.25 * num_classes), 16.0)
    figure = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(
        counts.T,
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        cmap="viridis",
        extent=(-0.5, num_clients - 0.5, -0.5, num_classes - 0.5),
    )
    figure.colorbar(image, ax=axes, label="train samples")
    opted_out = np.flatnonzero(partition.opt_out)
    if opted_out.size:
        axes.plot(
            opted_out,
            np.full(opted_out.size, -0.5),
            linestyle="none",
            marker="^",
            color="tab:red",
            markersize=4,
            clip_on=False,
            label=f"opt-out ({opted_out.size})",
        )
        axes.legend(loc="upper right", bbox_to_anchor=(1.0, 1.12), frameon=False, fontsize=8)
    axes.xaxis.set_major_locator(MaxNLocator(nbins=20, integer=True))
    axes.yaxis.set_major_locator(MaxNLocator(nbins=min(num_classes, 20), integer=True))
    axes.set_xlabel("client")
    axes.set_ylabel("class")
    description = _describe(partition)
    axes.set_title(
        f"{partition.scheme} partition, {num_clients} clients: train label counts"
        + (f"\n{description}" if description else ""),
        fontsize=10,
    )
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target, format="png")
    except OSError as exc:
        raise DataError(f"{target}: cannot write the plot ({exc.strerror or exc})") from None
    return target
