"""Writers of tiny files in the formats users bring (npz, CSV, image folders, AG News
CSV, one npz per client), for the tests of fedmoe.data's user readers."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedmoe.errors import DataError


def assert_one_line(exc: BaseException, *parts: str) -> None:
    """``exc`` is a one-line DataError holding every one of ``parts``."""
    message = str(exc)
    assert isinstance(exc, DataError), f"{type(exc).__name__}: {message}"
    assert "\n" not in message and "\r" not in message, message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def npz_bytes(**arrays: Any) -> bytes:
    """``arrays`` saved as an uncompressed .npz archive."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_npz(path: Path, **arrays: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(npz_bytes(**arrays))
    return path


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(csv_text(header, rows))
    return path


def png_bytes(pixels: np.ndarray, mode: str | None = None) -> bytes:
    """``pixels`` (``(H, W)`` or ``(H, W, C)`` uint8) as a PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    if mode is not None:
        image = image.convert(mode)
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(root: Path, classes: Mapping[str, Sequence[np.ndarray]]) -> dict[str, list[Path]]:
    """``root/<class>/<i>.png`` for each class's images; the paths written."""
    written: dict[str, list[Path]] = {}
    for name, images in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        written[name] = []
        for i, pixels in enumerate(images):
            path = folder / f"{i}.png"
            path.write_bytes(png_bytes(pixels))
            written[name].append(path)
    return written


def agnews_text(rows: Sequence[tuple[int, str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerows([(str(c), title, text) for c, title, text in rows])
    return buffer.getvalue()


def write_agnews(
    directory: Path,
    train: Sequence[tuple[int, str, str]],
    test: Sequence[tuple[int, str, str]],
    classes: Sequence[str] | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.csv").write_text(agnews_text(train))
    (directory / "test.csv").write_text(agnews_text(test))
    if classes is not None:
        (directory / "classes.txt").write_text("\n".join(classes) + "\n")
    return directory


def tabular(
    seed: int, sizes: Mapping[str, int], features: int = 4, classes: int = 3
) -> tuple[list[str], list[list[Any]]]:
    """A learnable CSV table: per client (name -> rows) features around its label, label
    as text, a ``site`` column; the header and the rows."""
    rng = np.random.default_rng(seed)
    header = [f"f{i}" for i in range(features)] + ["label", "site"]
    rows: list[list[Any]] = []
    for k, (site, n) in enumerate(sizes.items()):
        skew = rng.dirichlet(np.full(classes, 0.5))
        for _ in range(n):
            y = int(rng.choice(classes, p=skew))
            x = rng.normal(size=features) + 2.0 * y + 0.1 * k
            rows.append([f"{v:.5f}" for v in x] + [f"class-{'abc'[y]}", site])
    rng.shuffle(rows)  # clients interleaved, as real files are
    return header, rows


def client_arrays(
    seed: int, n_train: int, n_test: int | None, features: int = 3, classes: int = 3
) -> dict[str, np.ndarray]:
    """One client file's arrays (float64 features; no test arrays if ``n_test`` is None)."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, size=n)
        return rng.normal(size=(n, features)) + y[:, None], y

    arrays: dict[str, np.ndarray] = {}
    arrays["x_train"], arrays["y_train"] = split(n_train)
    if n_test is not None:
        arrays["x_test"], arrays["y_test"] = split(n_test)
    return arrays


# --------------------------------------------------------------------------------------
# Natural partitions: a table of sites and a config small enough to run in seconds
# --------------------------------------------------------------------------------------

SITES = {"north": 30, "east": 18, "south": 45, "west": 12}
PAPER = ["fedavg", "local", "finetune", "moe"]
SMALL: dict[str, Any] = {
    "model": "mlp",
    "methods": PAPER,
    "federated": {"rounds": 2, "clients_per_round": 2, "local_epochs": 1, "lr": 1e-3},
    "personalise": {"epochs": 3, "lr": 1e-3, "stopping": {"check_every": 1, "patience": 1}},
    "method": {"moe": {"lr": 1e-3}},
}


def write_sites_csv(directory: Path) -> Path:
    """``directory/sites.csv``: :data:`SITES` of different sizes, rows interleaved,
    labels as text, the client id in column ``site``."""
    header, rows = tabular(0, SITES)
    return write_csv(directory / "sites.csv", header, rows)


def natural_config(dataset: str, **sections: Any) -> Any:
    """:data:`SMALL` on ``dataset`` with a natural partition of every client (override
    ``partition`` keys and any other section through ``sections``)."""
    from fedmoe.experiment import config

    data: dict[str, Any] = dict(SMALL) | {"dataset": dataset}
    data["partition"] = {"scheme": "natural", "clients": 0} | sections.pop("partition", {})
    return config.from_dict(data | sections)
