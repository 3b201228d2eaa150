"""Readers for the standard published dataset formats.

Each reader turns files in their published format into numpy arrays and nothing else:
finding files, checksums and expected shapes live in :mod:`fedmoe.data.registry`.

Contract shared by every reader: the only exception a reader raises for a missing,
unreadable or malformed file is :class:`~fedmoe.errors.DataError`, with a one-line
message that starts with the file's path and says what is wrong. Library exceptions
(``OSError``, ``gzip.BadGzipFile``, ``zlib.error``, ``tarfile.TarError``, pickle
errors, ...) are caught at this boundary and converted.

Formats:

- IDX (MNIST, Fashion-MNIST, EMNIST): gzipped (``.gz`` suffix) or raw; labels have
  magic ``0x00000801`` and one big-endian ``uint32`` dimension, images have magic
  ``0x00000803`` and three. Images come back as ``uint8 (N, 1, H, W)``, labels as
  ``int64 (N,)``.
- The CIFAR-10 / CIFAR-100 "python version" tarballs, or their extracted folder:
  pickled batches (dicts with bytes keys) holding ``b"data"`` as ``uint8 (N, 3072)``
  and labels as a list of ints. Images come back as ``uint8 (N, 3, 32, 32)``.
- Built-ins generated offline: MNIST-1D (the ``mnist1d`` package) and scikit-learn's
  8x8 ``digits``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import pickle
import random
import re
import struct
import tarfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fedmoe.errors import DataError

IDX_LABELS_MAGIC = 0x00000801
"""IDX magic number of a 1-D unsigned-byte array (labels)."""
IDX_IMAGES_MAGIC = 0x00000803
"""IDX magic number of a 3-D unsigned-byte array (images)."""

_GZIP_MAGIC = b"\x1f\x8b"
_READ_CHUNK = 1 << 20
_DATASETS_EXTRA = "pip install 'fedmoe[datasets]'"


class Splits(NamedTuple):
    """A dataset's four arrays, as decoded from its files (no checks against a registry)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def data_error(origin: str | Path, problem: str) -> DataError:
    """A :class:`DataError` reading ``"<origin>: <problem>"`` on one line."""
    return DataError(one_line(f"{origin}: {problem}"))


def one_line(text: str) -> str:
    """``text`` with line breaks (and the blanks around them) folded into single spaces."""
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


def describe(exc: BaseException) -> str:
    """An exception as ``"TypeName: message"`` (message may be empty)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_gzip_name(path: Path) -> bool:
    """Whether ``path`` is named as gzip-compressed (``.gz`` suffix, case-insensitive)."""
    return path.name.lower().endswith(".gz")


# --------------------------------------------------------------------------------------
# Bytes and hashes
# --------------------------------------------------------------------------------------


def read_file_bytes(path: Path) -> bytes:
    """The contents of ``path``, gunzipped when its name ends in ``.gz``.

    Raises DataError for an unreadable file or invalid / truncated gzip data.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise data_error(path, f"cannot read file ({describe(exc)})") from exc
    if not is_gzip_name(path):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise data_error(path, f"invalid or truncated gzip data ({describe(exc)})") from exc


def content_digest(path: Path, *, gzipped: bool | None = None) -> tuple[str, int]:
    """SHA-256 (hex) and size in bytes of the file's contents, streaming.

    The contents are the decompressed bytes when ``gzipped`` (default: judged from the
    ``.gz`` suffix), so the digest does not depend on how a file was compressed.
    """
    compressed = is_gzip_name(path) if gzipped is None else gzipped
    digest = hashlib.sha256()
    size = 0
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below, errors told apart)
    except OSError as exc:
        raise data_error(path, f"cannot read file ({describe(exc)})") from exc
    with handle:
        stream = gzip.GzipFile(fileobj=handle, mode="rb") if compressed else handle
        try:
            while chunk := stream.read(_READ_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        except (OSError, EOFError, zlib.error) as exc:
            kind = "invalid or truncated gzip data" if compressed else "cannot read file"
            raise data_error(path, f"{kind} ({describe(exc)})") from exc
    return digest.hexdigest(), size


# --------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------


def parse_idx(data: bytes, origin: str | Path, *, magic: int) -> np.ndarray:
    """Decode IDX bytes whose magic number must be ``magic``; a ``uint8`` array.

    The header is the 4-byte magic (``0, 0, type, ndim``) then ``ndim`` big-endian
    ``uint32`` dimensions; the payload must hold exactly ``prod(dims)`` bytes.
    ``origin`` names the file in error messages.
    """
    if len(data) < 4:
        raise data_error(origin, f"truncated IDX file: {len(data)} bytes, no complete header")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        hint = " (gzip data in a file not named .gz?)" if data[:2] == _GZIP_MAGIC else ""
        raise data_error(
            origin, f"wrong IDX magic number 0x{found:08x}, expected 0x{magic:08x}{hint}"
        )
    ndim = magic & 0xFF
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise data_error(
            origin, f"truncated IDX header: {len(data)} bytes, the header needs {header_len}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    expected = math.prod(dims)
    held = len(data) - header_len
    shape = "x".join(str(d) for d in dims)
    if held < expected:
        raise data_error(
            origin,
            f"truncated IDX file: header says {shape} ({expected} bytes of data)"
            f" but the file holds {held}",
        )
    if held > expected:
        raise data_error(
            origin,
            f"IDX file too long: header says {shape} ({expected} bytes of data)"
            f" but the file holds {held}",
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def idx_images_from_bytes(
    data: bytes, origin: str | Path, *, transpose: bool = False
) -> np.ndarray:
    """IDX image bytes as ``uint8 (N, 1, H, W)``; ``transpose`` swaps H and W (EMNIST)."""
    images = parse_idx(data, origin, magic=IDX_IMAGES_MAGIC)
    if transpose:
        images = np.ascontiguousarray(images.transpose(0, 2, 1))
    return images[:, None, :, :]


def idx_labels_from_bytes(data: bytes, origin: str | Path) -> np.ndarray:
    """IDX label bytes as ``int64 (N,)``."""
    return parse_idx(data, origin, magic=IDX_LABELS_MAGIC).astype(np.int64)


def read_idx_images(path: Path, *, transpose: bool = False) -> np.ndarray:
    """Read an IDX image file (raw or ``.gz``) as ``uint8 (N, 1, H, W)``."""
    return idx_images_from_bytes(read_file_bytes(path), path, transpose=transpose)


def read_idx_labels(path: Path) -> np.ndarray:
    """Read an IDX label file (raw or ``.gz``) as ``int64 (N,)``."""
    return idx_labels_from_bytes(read_file_bytes(path), path)


def check_pair(
    images: np.ndarray, labels: np.ndarray, images_origin: str, labels_origin: str
) -> None:
    """Fail unless there is exactly one label per image."""
    if len(images) != len(labels):
        raise data_error(
            images_origin,
            f"holds {len(images)} images but {labels_origin} holds {len(labels)} labels",
        )


# --------------------------------------------------------------------------------------
# CIFAR python tarballs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CifarLayout:
    """Where a CIFAR "python version" release keeps its batches.

    ``folder`` is the directory inside the tarball (and the name it extracts to),
    ``train_members`` / ``test_members`` the pickled batches in the order they are
    concatenated, ``label_key`` the labels' key in each batch.
    """

    folder: str
    train_members: tuple[str, ...]
    test_members: tuple[str, ...]
    label_key: bytes

    @property
    def members(self) -> tuple[str, ...]:
        """All batch names, train first."""
        return self.train_members + self.test_members


CIFAR10 = CifarLayout(
    folder="cifar-10-batches-py",
    train_members=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_members=("test_batch",),
    label_key=b"labels",
)
CIFAR100 = CifarLayout(
    folder="cifar-100-python",
    train_members=("train",),
    test_members=("test",),
    label_key=b"fine_labels",
)

_CIFAR_PIXELS = 3 * 32 * 32
_NUMPY_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"
_PICKLE_ALLOWED = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class _ArrayUnpickler(pickle._Unpickler):
    """An unpickler that can build numpy arrays and plain containers, nothing else.

    The pure-Python unpickler is used on purpose: its memo is a dict, so a corrupt
    memo index cannot make it allocate gigabytes, and refusing every other global means
    a hostile file cannot run code.
    """

    def find_class(self, module: str, name: str) -> Any:
        canonical = module.replace("numpy._core", "numpy.core")
        if (canonical, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(canonical.replace("numpy.core", _NUMPY_CORE), name)


def _unpickle(data: bytes, origin: str) -> Any:
    try:
        return _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any library error here means a corrupt pickle
        raise data_error(origin, f"corrupt pickle ({describe(exc)})") from exc


def _batch_field(batch: Mapping[Any, Any], key: bytes, origin: str) -> Any:
    for candidate in (key, key.decode()):
        if candidate in batch:
            return batch[candidate]
    raise data_error(origin, f"batch has no {key!r} entry")


def decode_cifar_batch(data: bytes, origin: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch as ``uint8 (N, 3, 32, 32)`` images and ``int64 (N,)`` labels."""
    batch = _unpickle(data, origin)
    if not isinstance(batch, dict):
        raise data_error(origin, f"batch is a {type(batch).__name__}, expected a dict")
    pixels = _batch_field(batch, b"data", origin)
    if not (
        isinstance(pixels, np.ndarray)
        and pixels.dtype == np.uint8
        and pixels.ndim == 2
        and pixels.shape[1] == _CIFAR_PIXELS
    ):
        described = (
            f"{pixels.dtype} array of shape {pixels.shape}"
            if isinstance(pixels, np.ndarray)
            else type(pixels).__name__
        )
        raise data_error(origin, f"b'data' is a {described}, expected uint8 (N, 3072)")
    labels = _labels_array(_batch_field(batch, label_key, origin), origin, label_key)
    if len(labels) != len(pixels):
        raise data_error(origin, f"holds {len(pixels)} images but {len(labels)} labels")
    return pixels.reshape(-1, 3, 32, 32), labels


def _labels_array(raw: Any, origin: str, label_key: bytes) -> np.ndarray:
    try:
        labels = np.asarray(raw)
    except Exception as exc:  # arbitrary unpickled objects
        raise data_error(origin, f"{label_key!r} is not a list of ints ({describe(exc)})") from exc
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise data_error(origin, f"{label_key!r} is not a flat list of ints")
    try:
        return labels.astype(np.int64, casting="safe")
    except TypeError as exc:
        raise data_error(origin, f"{label_key!r} does not fit int64") from exc


def _read_tar_members(path: Path, layout: CifarLayout) -> dict[str, bytes]:
    wanted = {f"{layout.folder}/{member}": member for member in layout.members}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                member = wanted.get(info.name.removeprefix("./"))
                if member is None or member in found:
                    continue
                stream = tar.extractfile(info)
                if stream is None:
                    raise data_error(path, f"member {info.name} is not a regular file")
                found[member] = stream.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise data_error(path, f"corrupt tarball ({describe(exc)})") from exc
    missing = [f"{layout.folder}/{m}" for m in layout.members if m not in found]
    if missing:
        raise data_error(path, f"tarball lacks {', '.join(missing)}")
    return found


def _read_folder_members(folder: Path, layout: CifarLayout) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for member in layout.members:
        path = folder / member
        if not path.is_file():
            raise data_error(path, "missing CIFAR batch file")
        found[member] = read_file_bytes(path)
    return found


def read_cifar(path: Path, layout: CifarLayout) -> Splits:
    """Read a CIFAR python release: the tarball, or a folder holding the extracted batches.

    Train batches are concatenated in ``layout.train_members`` order. For CIFAR-100 the
    fine labels (100 classes) are used.
    """
    if not path.exists():
        raise data_error(path, "no such file or directory")
    if path.is_dir():
        members = _read_folder_members(path, layout)

        def origin(member: str) -> str:
            return str(path / member)
    else:
        members = _read_tar_members(path, layout)

        def origin(member: str) -> str:
            return f"{path} ({layout.folder}/{member})"

    def concat(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        parts = [decode_cifar_batch(members[n], origin(n), layout.label_key) for n in names]
        return (
            np.concatenate([images for images, _ in parts]),
            np.concatenate([labels for _, labels in parts]),
        )

    x_train, y_train = concat(layout.train_members)
    x_test, y_test = concat(layout.test_members)
    return Splits(x_train, y_train, x_test, y_test)


# --------------------------------------------------------------------------------------
# Built-ins generated offline
# --------------------------------------------------------------------------------------


@contextmanager
def _preserved_global_rngs() -> Iterator[None]:
    """Restore numpy's and Python's global RNG states afterwards (mnist1d reseeds them)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def generate_mnist1d() -> Splits:
    """MNIST-1D as generated by ``mnist1d`` with its default arguments (seed 42).

    Deterministic: 4000 train / 1000 test signals as ``float32 (N, 1, 40)``, labels
    ``int64`` in 0..9. The caller's global RNG states are left untouched.
    Raises DataError when the optional ``mnist1d`` package is not installed.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise DataError(f"mnist1d needs the optional package mnist1d: {_DATASETS_EXTRA}") from exc
    with _preserved_global_rngs():
        raw = make_dataset(get_dataset_args())

    def signals(key: str) -> np.ndarray:
        return np.asarray(raw[key], dtype=np.float32)[:, None, :]

    def labels(key: str) -> np.ndarray:
        return np.asarray(raw[key], dtype=np.int64)

    return Splits(signals("x"), labels("y"), signals("x_test"), labels("y_test"))


DIGITS_TRAIN_SIZE = 1437
"""scikit-learn ``digits``: the first 1437 samples are train, the last 360 test."""


def load_sklearn_digits() -> Splits:
    """scikit-learn's 8x8 ``digits`` as ``uint8 (N, 1, 8, 8)`` images in 0..255.

    Pixel values 0..16 are rescaled by ``round(v * 255 / 16)``. The split is fixed and
    documented: the first 1437 samples (in scikit-learn's order) are train, the last
    360 are test (about 80/20, every class present in both).
    Raises DataError when scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError(
            f"digits needs the optional package scikit-learn: {_DATASETS_EXTRA}"
        ) from exc
    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0))
    x = np.clip(images, 0, 255).astype(np.uint8)[:, None, :, :]
    y = np.asarray(bunch.target, dtype=np.int64)
    n = DIGITS_TRAIN_SIZE
    return Splits(x[:n], y[:n], x[n:], y[n:])
