"""Fixtures for the data tests: an isolated lookup environment and tiny files in the real
published formats (IDX, CIFAR python batches), written by the tests themselves."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import struct
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedmoe.data import registry
from fedmoe.data.catalogue import DATASETS, DatasetSpec, idx_files
from fedmoe.data.files import CifarFiles, FileSpec
from fedmoe.data.sources import CifarLayout, Splits

# The writers of users' files next to the tests (userfiles.py) are imported by name.
sys.path.insert(0, str(Path(__file__).parent))

_ENV_VARS = ("FEDMOE_DATA", "FEDMOE_MIRROR", "FEDMOE_CACHE", "FEDMOE_SYSTEM_DATA")


@dataclass(frozen=True)
class DataEnv:
    """Where the isolated lookup locations are: nothing else is searched."""

    system: Path
    cache: Path


@pytest.fixture
def data_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[DataEnv]:
    """Point the system root and the cache at empty temporary dirs; no FEDMOE_DATA/MIRROR.

    Also empties the in-process cache of decoded datasets before and after the test.
    """
    for variable in _ENV_VARS:
        monkeypatch.delenv(variable, raising=False)
    env = DataEnv(system=tmp_path / "system", cache=tmp_path / "cache")
    monkeypatch.setenv("FEDMOE_SYSTEM_DATA", str(env.system))
    monkeypatch.setenv("FEDMOE_CACHE", str(env.cache))
    registry.clear_cache()
    yield env
    registry.clear_cache()


# --------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8, 1-D labels or 3-D images) in the IDX format."""
    magic = 0x00000800 | array.ndim
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_file(path: Path, data: bytes, *, gz: bool) -> Path:
    """Write ``data`` to ``path`` (plus ``.gz``, compressed, when ``gz``); the path written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path.with_name(path.name + ".gz") if gz else path
    target.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return target


def random_splits(
    seed: int,
    *,
    n_train: int = 20,
    n_test: int = 10,
    image_shape: tuple[int, ...] = (1, 4, 3),
    num_classes: int = 3,
) -> Splits:
    """Random uint8 images and labels in 0..num_classes-1 (every class in train)."""
    rng = np.random.default_rng(seed)
    y_train = np.arange(n_train, dtype=np.int64) % num_classes
    return Splits(
        rng.integers(0, 256, size=(n_train, *image_shape), dtype=np.uint8),
        rng.permutation(y_train),
        rng.integers(0, 256, size=(n_test, *image_shape), dtype=np.uint8),
        rng.integers(0, num_classes, size=n_test).astype(np.int64),
    )


IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_file_contents(splits: Splits, *, prefix: str = "") -> dict[str, bytes]:
    """The four IDX files' (decompressed) contents for ``splits`` (images C == 1)."""
    arrays = (splits.x_train[:, 0], splits.y_train, splits.x_test[:, 0], splits.y_test)
    return {
        prefix + name: idx_bytes(a.astype(np.uint8))
        for name, a in zip(IDX_NAMES, arrays, strict=True)
    }


def write_idx_dataset(directory: Path, splits: Splits, *, gz: bool = True) -> dict[str, Path]:
    """Write ``splits`` as the four MNIST-named IDX files in ``directory``."""
    return {
        name: write_file(directory / name, data, gz=gz)
        for name, data in idx_file_contents(splits).items()
    }


def tiny_idx_spec(
    name: str = "tiny-idx",
    *,
    splits: Splits | None = None,
    pinned: bool = False,
    url_base: str | None = None,
) -> DatasetSpec:
    """A spec shaped like ``random_splits(0)`` (or ``splits``), IDX files named as MNIST's.

    With ``pinned``, the files' SHA-256 and sizes are those of ``splits``' IDX contents.
    """
    splits = splits if splits is not None else random_splits(0)
    contents = idx_file_contents(splits)
    pins = (
        {n: (hashlib.sha256(d).hexdigest(), len(d)) for n, d in contents.items()} if pinned else {}
    )
    return DatasetSpec(
        name=name,
        title="tiny test dataset",
        source=idx_files(pinned=pins),
        train_count=len(splits.x_train),
        test_count=len(splits.x_test),
        example_shape=tuple(splits.x_train.shape[1:]),
        num_classes=int(max(splits.y_train.max(), splits.y_test.max())) + 1,
        class_names=(),
        url_base=url_base,
    )


# --------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------


def cifar_batch_bytes(images: np.ndarray, labels: np.ndarray, label_key: bytes) -> bytes:
    """One batch pickled as the originals are: a dict with bytes keys, labels a list."""
    batch = {
        b"batch_label": b"testing batch",
        b"data": images.reshape(len(images), -1).astype(np.uint8),
        label_key: [int(v) for v in labels],
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }
    buffer = io.BytesIO()
    pickle.dump(batch, buffer)
    return buffer.getvalue()


def cifar_member_contents(layout: CifarLayout, splits: Splits) -> dict[str, bytes]:
    """Each batch member's pickled contents: train split evenly over the train members."""
    members: dict[str, bytes] = {}
    train_parts = np.array_split(np.arange(len(splits.x_train)), len(layout.train_members))
    for member, index in zip(layout.train_members, train_parts, strict=True):
        members[member] = cifar_batch_bytes(
            splits.x_train[index], splits.y_train[index], layout.label_key
        )
    test_parts = np.array_split(np.arange(len(splits.x_test)), len(layout.test_members))
    for member, index in zip(layout.test_members, test_parts, strict=True):
        members[member] = cifar_batch_bytes(
            splits.x_test[index], splits.y_test[index], layout.label_key
        )
    return members


def write_cifar_folder(directory: Path, layout: CifarLayout, splits: Splits) -> Path:
    """The extracted release: ``directory/<layout.folder>/<member>``; returns the folder."""
    folder = directory / layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    for member, data in cifar_member_contents(layout, splits).items():
        (folder / member).write_bytes(data)
    return folder


def cifar_tar_bytes(layout: CifarLayout, splits: Splits, *, gz: bool = True) -> bytes:
    """The release tarball (gzipped by default) holding ``<layout.folder>/<member>``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        folder_info = tarfile.TarInfo(layout.folder)
        folder_info.type = tarfile.DIRTYPE
        tar.addfile(folder_info)
        for member, data in cifar_member_contents(layout, splits).items():
            info = tarfile.TarInfo(f"{layout.folder}/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def cifar_splits(seed: int, num_classes: int, *, n_train: int = 10, n_test: int = 4) -> Splits:
    """Random CIFAR-shaped splits (uint8 (N, 3, 32, 32))."""
    return random_splits(
        seed, n_train=n_train, n_test=n_test, image_shape=(3, 32, 32), num_classes=num_classes
    )


def tiny_cifar_spec(base: str, splits: Splits, name: str | None = None) -> DatasetSpec:
    """The registry's ``base`` CIFAR spec shrunk to ``splits``' counts."""
    spec = DATASETS[base]
    assert isinstance(spec.source, CifarFiles)
    return dataclasses.replace(
        spec,
        name=name or spec.name,
        train_count=len(splits.x_train),
        test_count=len(splits.x_test),
    )


def pinned_file(name: str, data: bytes) -> FileSpec:
    """A FileSpec pinned to ``data``'s SHA-256 and size."""
    return FileSpec(name, hashlib.sha256(data).hexdigest(), len(data))


class Formats:
    """The helpers above, handed to tests by the ``formats`` fixture (a conftest cannot be
    imported reliably when several test folders have one)."""

    IDX_NAMES = IDX_NAMES
    idx_bytes = staticmethod(idx_bytes)
    write_file = staticmethod(write_file)
    random_splits = staticmethod(random_splits)
    idx_file_contents = staticmethod(idx_file_contents)
    write_idx_dataset = staticmethod(write_idx_dataset)
    tiny_idx_spec = staticmethod(tiny_idx_spec)
    cifar_batch_bytes = staticmethod(cifar_batch_bytes)
    cifar_member_contents = staticmethod(cifar_member_contents)
    write_cifar_folder = staticmethod(write_cifar_folder)
    cifar_tar_bytes = staticmethod(cifar_tar_bytes)
    cifar_splits = staticmethod(cifar_splits)
    tiny_cifar_spec = staticmethod(tiny_cifar_spec)
    pinned_file = staticmethod(pinned_file)


@pytest.fixture(scope="session")
def formats() -> type[Formats]:
    """Writers of tiny files in the real published formats."""
    return Formats
