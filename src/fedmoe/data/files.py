"""Published dataset files: how each format is laid out on disk, found and decoded.

A :class:`FileSpec` is one published file (with its pinned SHA-256 of the decompressed
contents, or ``None``); a :class:`FileFormat` (:class:`IdxFiles`, :class:`CifarFiles`)
locates and decodes a dataset's files; a :class:`BuiltinSource` generates one instead.
Checksum statuses are :data:`VERIFIED`, :data:`NOT_PINNED` and :data:`BUILT_IN`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple, Protocol

import numpy as np

from fedmoe.data import sources
from fedmoe.data.sources import CifarLayout, Splits, data_error

VERIFIED = "verified"
NOT_PINNED = "not pinned"
BUILT_IN = "built-in (generated locally, no files)"


@dataclass(frozen=True)
class FileSpec:
    """One published file.

    ``name`` is the decompressed file name; on disk it may be ``name`` or ``name.gz``,
    and it is downloaded as ``name.gz``. ``sha256`` (hex) and ``size`` (bytes) describe
    the decompressed contents; ``None`` means not pinned.
    """

    name: str
    sha256: str | None = None
    size: int | None = None

    @property
    def candidates(self) -> tuple[str, str]:
        """File names it is looked up under, in order of preference."""
        return (self.name, f"{self.name}.gz")

    @property
    def download_name(self) -> str:
        """The name it is published (and cached) under."""
        return f"{self.name}.gz"

    @property
    def described(self) -> str:
        """The name as shown in messages: ``name[.gz]``."""
        return f"{self.name}[.gz]"

    def find(self, directory: Path) -> Path | None:
        """The first candidate that is a file in ``directory``, or ``None``."""
        for candidate in self.candidates:
            path = directory / candidate
            if path.is_file():
                return path
        return None

    def check_digest(self, digest: str, size: int, origin: str | Path) -> str:
        """``VERIFIED`` or ``NOT_PINNED``; DataError when the contents do not match."""
        if self.size is not None and size != self.size:
            raise data_error(origin, f"contents are {size} bytes, expected {self.size}")
        if self.sha256 is None:
            return NOT_PINNED
        if digest != self.sha256:
            raise data_error(
                origin,
                f"checksum mismatch: SHA-256 of the decompressed contents is {digest},"
                f" expected {self.sha256}",
            )
        return VERIFIED


class Lookup(NamedTuple):
    """What a directory holds of a dataset: files found by role, and what is missing."""

    found: dict[str, Path]
    missing: tuple[str, ...]


@dataclass(frozen=True)
class Decoded:
    """Arrays decoded from files, with what to name in errors and per-file checksum status.

    ``origins`` names the file(s) behind ``x_train, y_train, x_test, y_test``.
    """

    splits: Splits
    origins: tuple[str, str, str, str]
    checksums: dict[str, str]


class FileFormat(Protocol):
    """How one kind of published dataset is laid out on disk and decoded."""

    kind: ClassVar[str]

    def downloads(self) -> dict[str, FileSpec]:
        """The published files by role: what ``fetch`` downloads."""
        ...

    def required(self) -> tuple[str, ...]:
        """What must be present, as file names for messages (``locate`` reports these)."""
        ...

    def locate(self, directory: Path) -> Lookup:
        """Find this dataset's files in ``directory`` (no decoding)."""
        ...

    def decode(self, files: Mapping[str, Path]) -> Decoded:
        """Decode the files found by :meth:`locate` (or downloaded, same roles)."""
        ...


def locate_files(specs: Mapping[str, FileSpec], directory: Path) -> Lookup:
    """Find each of ``specs`` (by role) in ``directory``."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, spec in specs.items():
        path = spec.find(directory)
        if path is None:
            missing.append(spec.described)
        else:
            found[role] = path
    return Lookup(found, tuple(missing))


@dataclass(frozen=True)
class IdxFiles:
    """An IDX dataset: four files (train/test images/labels), raw or gzipped.

    ``transpose`` swaps each image's H and W (EMNIST publishes its images transposed).
    """

    kind: ClassVar[str] = "idx"
    train_images: FileSpec
    train_labels: FileSpec
    test_images: FileSpec
    test_labels: FileSpec
    transpose: bool = False

    def downloads(self) -> dict[str, FileSpec]:
        return {
            "train_images": self.train_images,
            "train_labels": self.train_labels,
            "test_images": self.test_images,
            "test_labels": self.test_labels,
        }

    def required(self) -> tuple[str, ...]:
        return tuple(spec.described for spec in self.downloads().values())

    def locate(self, directory: Path) -> Lookup:
        return locate_files(self.downloads(), directory)

    def decode(self, files: Mapping[str, Path]) -> Decoded:
        specs = self.downloads()
        checksums: dict[str, str] = {}

        def read(role: str, parse: Callable[[bytes, Path], np.ndarray]) -> np.ndarray:
            path = files[role]
            data = sources.read_file_bytes(path)
            array = parse(data, path)
            digest = hashlib.sha256(data).hexdigest()
            checksums[role] = specs[role].check_digest(digest, len(data), path)
            return array

        def images(data: bytes, path: Path) -> np.ndarray:
            return sources.idx_images_from_bytes(data, path, transpose=self.transpose)

        arrays: list[np.ndarray] = []
        for split in ("train", "test"):
            x = read(f"{split}_images", images)
            y = read(f"{split}_labels", sources.idx_labels_from_bytes)
            sources.check_pair(x, y, str(files[f"{split}_images"]), str(files[f"{split}_labels"]))
            arrays += [x, y]
        x_train, y_train, x_test, y_test = (str(files[role]) for role in specs)
        return Decoded(Splits(*arrays), (x_train, y_train, x_test, y_test), checksums)


@dataclass(frozen=True)
class CifarFiles:
    """A CIFAR python release: the tarball (``archive``, raw or gzipped) or its folder."""

    kind: ClassVar[str] = "cifar-python"
    archive: FileSpec
    layout: CifarLayout

    def downloads(self) -> dict[str, FileSpec]:
        return {"archive": self.archive}

    def _extracted(self, directory: Path) -> Path | None:
        for folder in (directory / self.layout.folder, directory):
            if all((folder / member).is_file() for member in self.layout.members):
                return folder
        return None

    def required(self) -> tuple[str, ...]:
        return (f"{self.archive.described} or an extracted {self.layout.folder}/",)

    def locate(self, directory: Path) -> Lookup:
        folder = self._extracted(directory)
        if folder is not None:
            return Lookup({"folder": folder}, ())
        archive = self.archive.find(directory)
        if archive is not None:
            return Lookup({"archive": archive}, ())
        return Lookup({}, self.required())

    def decode(self, files: Mapping[str, Path]) -> Decoded:
        if "folder" in files:
            path = files["folder"]
            checksums = {"folder": NOT_PINNED}
        else:
            path = files["archive"]
            status = NOT_PINNED
            if self.archive.sha256 is not None:
                status = self.archive.check_digest(*sources.content_digest(path), path)
            checksums = {"archive": status}
        splits = sources.read_cifar(path, self.layout)
        train = f"{path} ({', '.join(self.layout.train_members)})"
        test = f"{path} ({', '.join(self.layout.test_members)})"
        return Decoded(splits, (train, train, test, test), checksums)


@dataclass(frozen=True)
class BuiltinSource:
    """A dataset generated locally by ``generate`` (no files, nothing to download)."""

    kind: ClassVar[str] = "built-in"
    generate: Callable[[], Splits]
