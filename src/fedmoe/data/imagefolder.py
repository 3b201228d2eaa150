"""The user's folders of images, one per class: into an
:class:`~fedmoe.data.dataset.ArrayDataset` of ``uint8 (N, C, H, W)`` images.

Layouts: ``DIR/<class>/*.png|jpg|jpeg`` (a seeded ``ReadOptions.test_fraction`` of all
images is the test split), or ``DIR/train/<class>/...`` and ``DIR/test/<class>/...``
(every test class must also be a train class; a train class may have no test folder).
Class names are the folder names, in natural order (``2`` before ``10``); files are
read in natural order of their names; other files and folders whose name starts with
``.`` are ignored. Images are decoded with Pillow and must all have one size and mode:
``L`` (1 channel), ``LA`` (2), ``RGB`` (3) or ``RGBA`` (4); bilevel (``1``) images are
read as ``L`` (0 or 255) and palette (``P``) images as ``RGB``.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from fedmoe.data.dataset import ArrayDataset
from fedmoe.data.holdout import holdout_mask
from fedmoe.data.labels import natural_key
from fedmoe.data.options import ReadOptions
from fedmoe.data.sources import data_error, describe
from fedmoe.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_CONVERTED = {"1": "L", "P": "RGB"}
_MODES = ("L", "LA", "RGB", "RGBA")


def _visible_dirs(directory: Path) -> list[Path]:
    try:
        entries = [p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError as exc:
        raise data_error(directory, f"cannot list folder ({describe(exc)})") from exc
    return sorted(entries, key=lambda p: (natural_key(p.name), p.name))


def _images(folder: Path) -> list[Path]:
    try:
        files = [
            p
            for p in folder.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        ]
    except OSError as exc:
        raise data_error(folder, f"cannot list folder ({describe(exc)})") from exc
    if not files:
        raise data_error(folder, f"empty class folder (no {', '.join(IMAGE_SUFFIXES)} files)")
    return sorted(files, key=lambda p: (natural_key(p.name), p.name))


class _Reference(NamedTuple):
    """The first image's size and mode, which every other image must have."""

    path: Path
    size: tuple[int, int]
    mode: str


def _read_image(path: Path, reference: _Reference | None) -> tuple[np.ndarray, _Reference]:
    """One image as ``uint8 (C, H, W)``, checked against the first image's size and mode."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            size, mode = image.size, image.mode
            if reference is not None and (size, mode) != (reference.size, reference.mode):
                raise data_error(
                    path,
                    f"image is {size[0]}x{size[1]} {mode} but the first image,"
                    f" {reference.path}, is {reference.size[0]}x{reference.size[1]}"
                    f" {reference.mode}; every image must have one size and mode",
                )
            target = _CONVERTED.get(mode, mode)
            if target not in _MODES:
                raise data_error(
                    path, f"image mode {mode} is not supported; use L, LA, RGB or RGBA images"
                )
            image.load()
            pixels = np.asarray(image if target == mode else image.convert(target))
    except DataError:
        raise
    except Exception as exc:  # Pillow raises many kinds on corrupt files
        raise data_error(path, f"undecodable image ({describe(exc)})") from exc
    if pixels.dtype != np.uint8 or pixels.shape[:2] != (size[1], size[0]):
        raise data_error(path, f"decoded to {pixels.dtype} {pixels.shape}, expected uint8 pixels")
    channels_first = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return channels_first, reference or _Reference(path, size, mode)


class _Listing(NamedTuple):
    files: list[Path]
    labels: list[int]


def _list(root: Path, classes: list[str]) -> _Listing:
    files: list[Path] = []
    labels: list[int] = []
    for c, name in enumerate(classes):
        folder = root / name
        if folder.is_dir():
            found = _images(folder)
            files += found
            labels += [c] * len(found)
    return _Listing(files, labels)


def _decode(listing: _Listing, reference: _Reference | None) -> tuple[np.ndarray, _Reference]:
    pixels = []
    for path in listing.files:
        image, reference = _read_image(path, reference)
        pixels.append(image)
    assert reference is not None
    return np.ascontiguousarray(np.stack(pixels)), reference


def read_image_folder(directory: Path, name: str, options: ReadOptions) -> ArrayDataset:
    """The class folders under ``directory`` as an ArrayDataset (see the module doc)."""
    if not directory.is_dir():
        raise data_error(directory, "not a folder (expected DIR/<class>/*.png|jpg|jpeg)")
    train_root, test_root = directory / "train", directory / "test"
    split = train_root.is_dir()
    if split and not test_root.is_dir():
        raise data_error(directory, "has train/ but no test/ folder")
    root = train_root if split else directory
    classes = [p.name for p in _visible_dirs(root)]
    if not classes:
        raise data_error(
            root, "no class folders (expected <class>/*.png|jpg|jpeg, one folder per class)"
        )
    train = _list(root, classes)
    x_train, reference = _decode(train, None)
    y_train = np.array(train.labels, dtype=np.int64)
    if split:
        unknown = [p.name for p in _visible_dirs(test_root) if p.name not in classes]
        if unknown:
            raise data_error(
                test_root / unknown[0], f"test class {unknown[0]!r} has no folder in {train_root}"
            )
        test = _list(test_root, classes)
        if not test.files:
            raise data_error(test_root, "no test images")
        x_test, _ = _decode(test, reference)
        y_test = np.array(test.labels, dtype=np.int64)
    else:
        held = holdout_mask(
            np.zeros(len(y_train), dtype=np.int64), options.test_fraction, options.seed, directory
        )
        x_train, x_test = x_train[~held], x_train[held]
        y_train, y_test = y_train[~held], y_train[held]
    return ArrayDataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=len(classes),
        source=str(directory),
        class_names=tuple(classes),
    )
