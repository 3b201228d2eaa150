"""The user's ``.npz`` files: ``x_train, y_train, x_test, y_test`` into an
:class:`~fedmoe.data.dataset.ArrayDataset`.

An ``.npz`` is a zip archive of ``.npy`` arrays. It is read member by member without
numpy's loader: a member's header is checked against its size before any data is
read (a corrupt header cannot make it allocate gigabytes) and arrays of Python objects
(pickles) are refused. ``x`` may be any float (stored as ``float32``) or ``uint8``
array of shape ``(N, ...)`` with at least one axis per example; labels must be integers
(remapped to ``0 .. C - 1`` when they are not already, the original values kept as
class names) unless the file holds ``class_names`` (strings, one per label value).
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fedmoe.data import sources
from fedmoe.data.dataset import ArrayDataset
from fedmoe.data.labels import encode_integer_labels
from fedmoe.data.options import ReadOptions
from fedmoe.data.sources import data_error, describe
from fedmoe.errors import DataError

SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, origin: str) -> np.ndarray:
    """One ``.npy`` member, its header checked against its size before reading."""
    with zf.open(info) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise data_error(origin, f"npy format version {version[0]}.{version[1]} unsupported")
        if dtype.hasobject:
            raise data_error(
                origin, "holds Python objects (a pickle); save plain numeric arrays instead"
            )
        needed = math.prod(shape) * dtype.itemsize
        held = info.file_size - stream.tell()
        if held != needed:
            what = "truncated" if held < needed else "too long"
            raise data_error(
                origin,
                f"{what}: its header says {dtype} {tuple(shape)} ({needed} bytes) but it"
                f" holds {held}",
            )
        payload = stream.read(needed)
    if len(payload) != needed:
        raise data_error(origin, f"truncated: {len(payload)} of {needed} bytes")
    array = np.frombuffer(payload, dtype=dtype)
    if fortran:
        return array.reshape(shape[::-1]).transpose()
    return array.reshape(shape)


def read_npz(
    path: Path, required: Sequence[str], optional: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """The arrays ``required`` (DataError naming the missing ones) and those of
    ``optional`` that are present, from the ``.npz`` at ``path`` (raw or ``.gz``)."""
    data = sources.read_file_bytes(path)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except Exception as exc:  # any zipfile error here means a corrupt archive
        raise data_error(path, f"not an .npz archive ({describe(exc)})") from exc
    arrays: dict[str, np.ndarray] = {}
    with zf:
        try:
            members = {info.filename.removesuffix(".npy"): info for info in zf.infolist()}
        except Exception as exc:
            raise data_error(path, f"corrupt .npz archive ({describe(exc)})") from exc
        missing = [key for key in required if key not in members]
        if missing:
            held = ", ".join(sorted(members)) or "nothing"
            raise data_error(path, f"lacks {', '.join(missing)} (it holds {held})")
        for key in (*required, *(k for k in optional if k in members)):
            origin = f"{path} ({key})"
            try:
                arrays[key] = _member(zf, members[key], origin)
            except DataError:
                raise
            except Exception as exc:  # zip, zlib and npy-header errors alike
                raise data_error(origin, f"corrupt array ({describe(exc)})") from exc
    return arrays


class Examples(NamedTuple):
    """Checked inputs and raw integer labels of one split."""

    x: np.ndarray
    y: np.ndarray


def check_inputs(x: np.ndarray, origin: str) -> np.ndarray:
    """``x`` as stored in an ArrayDataset: ``uint8`` kept, floats as finite ``float32``;
    at least one axis per example."""
    if x.ndim < 2:
        raise data_error(
            origin,
            f"has shape {x.shape}; examples need at least one axis, e.g. (N, F) features",
        )
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind != "f":
        raise data_error(origin, f"is {x.dtype}; inputs must be a float or uint8 array")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = x.astype(np.float32)
    if not np.isfinite(converted).all():
        raise data_error(origin, "holds non-finite values (NaN, inf, or beyond float32's range)")
    return converted


def check_labels(y: np.ndarray, n: int, origin: str) -> np.ndarray:
    """``y`` as a flat integer array of one label per example."""
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise data_error(
            origin, f"is {y.dtype} of shape {y.shape}; labels must be a 1-D integer array"
        )
    if len(y) != n:
        raise data_error(origin, f"holds {len(y)} labels for {n} examples")
    return y


def split_examples(arrays: dict[str, np.ndarray], path: Path, split: str) -> Examples:
    """The checked ``x_<split>`` and ``y_<split>`` of an npz file's arrays."""
    x = check_inputs(arrays[f"x_{split}"], f"{path} (x_{split})")
    y = check_labels(arrays[f"y_{split}"], len(x), f"{path} (y_{split})")
    return Examples(x, y)


def check_same_inputs(x: np.ndarray, origin: str, reference: np.ndarray, ref_origin: str) -> None:
    """Fail unless ``x``'s examples have the reference's shape and dtype."""
    if x.shape[1:] != reference.shape[1:] or x.dtype != reference.dtype:
        raise data_error(
            origin,
            f"holds {x.dtype} examples of shape {x.shape[1:]} but {ref_origin} holds"
            f" {reference.dtype} {reference.shape[1:]}",
        )


def _class_names(raw: np.ndarray, labels: list[np.ndarray], origin: str) -> tuple[str, ...]:
    if raw.ndim != 1 or raw.dtype.kind not in "US":
        raise data_error(origin, f"is {raw.dtype} of shape {raw.shape}; expected 1-D strings")
    names = tuple(v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in raw)
    for y in labels:
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(names)):
            raise data_error(
                origin,
                f"names {len(names)} classes but the labels reach {int(y.min())}..{int(y.max())}",
            )
    return names


def read_npz_dataset(path: Path, name: str, options: ReadOptions | None = None) -> ArrayDataset:
    """The ``.npz`` at ``path`` as an ArrayDataset named ``name`` (see the module doc;
    no option applies)."""
    arrays = read_npz(path, SPLIT_KEYS, ("class_names",))
    train = split_examples(arrays, path, "train")
    test = split_examples(arrays, path, "test")
    check_same_inputs(test.x, f"{path} (x_test)", train.x, "x_train")
    for examples, split in ((train, "train"), (test, "test")):
        if len(examples.x) == 0:
            raise data_error(f"{path} (x_{split})", "holds no examples")
    if "class_names" in arrays:
        names = _class_names(arrays["class_names"], [train.y, test.y], f"{path} (class_names)")
        y_train, y_test = train.y.astype(np.int64), test.y.astype(np.int64)
    else:
        y_train, y_test, names = encode_integer_labels(train.y, test.y)
    return ArrayDataset(
        name=name,
        x_train=train.x,
        y_train=y_train,
        x_test=test.x,
        y_test=y_test,
        num_classes=len(names),
        source=str(path),
        class_names=names,
    )
