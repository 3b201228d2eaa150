"""Named datasets: what they are, where to find them, how to load and fetch them.

A dataset is a :class:`DatasetSpec` in :data:`DATASETS`: its expected shapes, classes,
canonical download location and, per file, the SHA-256 of the *decompressed* contents
where one has been verified (``None`` otherwise: such files are checked by decoding and
comparing shapes only, and reported as ``"not pinned"``).

Lookup order for a dataset ``NAME`` (first directory holding all its files wins):

1. the ``data_dir`` argument: ``<data_dir>/NAME`` then ``<data_dir>``;
2. the ``FEDMOE_DATA`` environment variable: ``$FEDMOE_DATA/NAME`` then ``$FEDMOE_DATA``;
3. the system datasets root: ``/usr/share/datasets/NAME`` (where Debian's
   ``dataset-fashion-mnist`` installs), overridable with ``FEDMOE_SYSTEM_DATA``;
4. the user cache: ``<cache root>/NAME``, the root being ``$FEDMOE_CACHE``, else
   ``$XDG_CACHE_HOME/fedmoe``, else ``~/.cache/fedmoe``.

Every file may be present raw or gzipped (``NAME`` or ``NAME.gz``). Decoded datasets are
cached in-process, keyed on the files' resolved paths, sizes, modification times and
inodes, so a replaced file is decoded afresh.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

import numpy as np

from fedmoe import __version__
from fedmoe.data import sources
from fedmoe.data.dataset import ArrayDataset
from fedmoe.data.sources import CifarLayout, Splits, data_error
from fedmoe.errors import DataError

VERIFIED = "verified"
NOT_PINNED = "not pinned"
BUILT_IN = "built-in (generated locally, no files)"

DOWNLOAD_TIMEOUT_S = 60.0
"""Seconds a download may wait for the server (connect or any single read)."""

ProgressCallback = Callable[[str, int, int | None], None]
"""Called as ``progress(file_name, bytes_done, bytes_total_or_None)`` while downloading."""


# --------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------


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


def _locate_files(specs: Mapping[str, FileSpec], directory: Path) -> Lookup:
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
        return _locate_files(self.downloads(), directory)

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


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset and what loading it must produce.

    ``train_count`` / ``test_count`` examples of shape ``example_shape`` and dtype
    ``dtype``; labels in ``0 .. num_classes - 1``. ``url_base`` is the canonical download
    directory (``None``: not downloadable, ``manual_download`` says how to get it);
    ``install_hint`` is another way to get it, shown when it is missing.
    """

    name: str
    title: str
    source: FileFormat | BuiltinSource
    train_count: int
    test_count: int
    example_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...] = field(default=())
    dtype: str = "uint8"
    url_base: str | None = None
    install_hint: str | None = None
    manual_download: str | None = None

    def how_to_get(self) -> str:
        """One sentence telling the user how to obtain the files."""
        if self.url_base is None:
            return self.manual_download or f"{self.name} cannot be downloaded automatically"
        ways = [f"`fedmoe data fetch {self.name}`"]
        if self.install_hint:
            ways.append(f"`{self.install_hint}`")
        return f"get it with {' or '.join(ways)}"


def _idx(
    prefix: str = "",
    *,
    test: str = "t10k",
    transpose: bool = False,
    pinned: Mapping[str, tuple[str, int]] | None = None,
) -> IdxFiles:
    """The four IDX files ``<prefix>{train,<test>}-{images-idx3,labels-idx1}-ubyte``."""

    def spec(name: str) -> FileSpec:
        sha256, size = (pinned or {}).get(name, (None, None))
        return FileSpec(prefix + name, sha256, size)

    return IdxFiles(
        train_images=spec("train-images-idx3-ubyte"),
        train_labels=spec("train-labels-idx1-ubyte"),
        test_images=spec(f"{test}-images-idx3-ubyte"),
        test_labels=spec(f"{test}-labels-idx1-ubyte"),
        transpose=transpose,
    )


_FASHION_MNIST_SHA256 = {
    # Decompressed contents, measured on Debian's dataset-fashion-mnist files.
    "train-images-idx3-ubyte": (
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        47040016,
    ),
    "train-labels-idx1-ubyte": (
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        60008,
    ),
    "t10k-images-idx3-ubyte": (
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        7840016,
    ),
    "t10k-labels-idx1-ubyte": (
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        10008,
    ),
}

_DIGIT_NAMES = tuple(str(d) for d in range(10))
_EMNIST_BALANCED_NAMES = (
    _DIGIT_NAMES + tuple(chr(c) for c in range(ord("A"), ord("Z") + 1)) + tuple("abdefghnqrt")
)
_EMNIST_MANUAL = (
    "EMNIST is not fetched automatically: download"
    " https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip, unzip it and put"
    " gzip/emnist-{split}-*-ubyte.gz in a directory named emnist-{split} under"
    " $FEDMOE_DATA or the data_dir you pass"
)
_CIFAR100_NAMES: tuple[str, ...] = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)


def _emnist(split: str, train: int, test: int, names: tuple[str, ...]) -> DatasetSpec:
    return DatasetSpec(
        name=f"emnist-{split}",
        title=f"EMNIST {split} (NIST handwritten characters, 28x28 greyscale)",
        source=_idx(f"emnist-{split}-", test="test", transpose=True),
        train_count=train,
        test_count=test,
        example_shape=(1, 28, 28),
        num_classes=len(names),
        class_names=names,
        manual_download=_EMNIST_MANUAL.format(split=split),
    )


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="mnist",
            title="MNIST handwritten digits (28x28 greyscale)",
            source=_idx(),
            train_count=60000,
            test_count=10000,
            example_shape=(1, 28, 28),
            num_classes=10,
            class_names=_DIGIT_NAMES,
            url_base="https://ossci-datasets.s3.amazonaws.com/mnist/",
        ),
        DatasetSpec(
            name="fashion-mnist",
            title="Fashion-MNIST Zalando article images (28x28 greyscale)",
            source=_idx(pinned=_FASHION_MNIST_SHA256),
            train_count=60000,
            test_count=10000,
            example_shape=(1, 28, 28),
            num_classes=10,
            class_names=(
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ),
            url_base="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            install_hint="apt-get install dataset-fashion-mnist",
        ),
        _emnist("digits", 240000, 40000, _DIGIT_NAMES),
        _emnist("balanced", 112800, 18800, _EMNIST_BALANCED_NAMES),
        DatasetSpec(
            name="cifar10",
            title="CIFAR-10 tiny images (32x32 colour)",
            source=CifarFiles(FileSpec("cifar-10-python.tar"), sources.CIFAR10),
            train_count=50000,
            test_count=10000,
            example_shape=(3, 32, 32),
            num_classes=10,
            class_names=(
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ),
            url_base="https://www.cs.toronto.edu/~kriz/",
        ),
        DatasetSpec(
            name="cifar100",
            title="CIFAR-100 tiny images, fine labels (32x32 colour)",
            source=CifarFiles(FileSpec("cifar-100-python.tar"), sources.CIFAR100),
            train_count=50000,
            test_count=10000,
            example_shape=(3, 32, 32),
            num_classes=100,
            class_names=_CIFAR100_NAMES,
            url_base="https://www.cs.toronto.edu/~kriz/",
        ),
        DatasetSpec(
            name="mnist1d",
            title="MNIST-1D signals (length 40), generated by the mnist1d package, seed 42",
            source=BuiltinSource(sources.generate_mnist1d),
            train_count=4000,
            test_count=1000,
            example_shape=(1, 40),
            num_classes=10,
            class_names=_DIGIT_NAMES,
            dtype="float32",
        ),
        DatasetSpec(
            name="digits",
            title="scikit-learn 8x8 digits (first 1437 train, last 360 test)",
            source=BuiltinSource(sources.load_sklearn_digits),
            train_count=sources.DIGITS_TRAIN_SIZE,
            test_count=1797 - sources.DIGITS_TRAIN_SIZE,
            example_shape=(1, 8, 8),
            num_classes=10,
            class_names=_DIGIT_NAMES,
        ),
    )
}
"""The registry, by canonical name. Tests may add or replace entries (monkeypatch)."""

_ALIASES = {"fmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}


def get_spec(name: str) -> DatasetSpec:
    """The spec registered as ``name`` (case-insensitive, ``_`` same as ``-``)."""
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key in DATASETS:
        return DATASETS[key]
    raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")


# --------------------------------------------------------------------------------------
# Lookup
# --------------------------------------------------------------------------------------


def _env_path(variable: str) -> Path | None:
    value = os.environ.get(variable, "").strip()
    return Path(value).expanduser() if value else None


def system_data_root() -> Path:
    """``$FEDMOE_SYSTEM_DATA``, else ``/usr/share/datasets`` (Debian's dataset packages)."""
    return _env_path("FEDMOE_SYSTEM_DATA") or Path("/usr/share/datasets")


def cache_root() -> Path:
    """``$FEDMOE_CACHE``, else ``$XDG_CACHE_HOME/fedmoe``, else ``~/.cache/fedmoe``."""
    explicit = _env_path("FEDMOE_CACHE")
    if explicit is not None:
        return explicit
    xdg = _env_path("XDG_CACHE_HOME") or Path.home() / ".cache"
    return xdg / "fedmoe"


def search_dirs(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The directories searched for dataset ``name``, in lookup order, without duplicates."""
    canonical = get_spec(name).name
    dirs: list[Path] = []
    for base in (Path(data_dir).expanduser() if data_dir else None, _env_path("FEDMOE_DATA")):
        if base is not None:
            dirs += [base / canonical, base]
    dirs += [system_data_root() / canonical, cache_root() / canonical]
    return list(dict.fromkeys(dirs))


class Located(NamedTuple):
    """Where a dataset's files were found: the directory and each file (or folder) by role."""

    directory: Path
    files: dict[str, Path]


def locate(name: str, data_dir: str | os.PathLike[str] | None = None) -> Located:
    """Find a file-based dataset's files; DataError naming where it looked if absent."""
    spec = get_spec(name)
    if isinstance(spec.source, BuiltinSource):
        raise DataError(f"{spec.name} is built in: it has no files to locate")
    dirs = search_dirs(spec.name, data_dir)
    partial: list[str] = []
    for directory in dirs:
        found, missing = spec.source.locate(directory)
        if not missing:
            return Located(directory, found)
        if found:
            partial.append(f"{directory} lacks {', '.join(missing)}")
    needs = spec.source.required()
    detail = f"; {'; '.join(partial)}" if partial else ""
    raise DataError(
        sources.one_line(
            f"{spec.name}: data files not found (needs {', '.join(needs)}; looked in"
            f" {', '.join(str(d) for d in dirs)}){detail}; {spec.how_to_get()}"
        )
    )


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Loaded:
    dataset: ArrayDataset
    directory: Path | None
    files: dict[str, Path]
    checksums: dict[str, str]


def _check_splits(spec: DatasetSpec, decoded: Decoded) -> None:
    """Fail unless the decoded arrays match ``spec`` (shapes, dtypes, label range)."""
    x_train, y_train, x_test, y_test = decoded.splits
    x_train_origin, y_train_origin, x_test_origin, y_test_origin = decoded.origins
    for x, y, count, x_origin, y_origin in (
        (x_train, y_train, spec.train_count, x_train_origin, y_train_origin),
        (x_test, y_test, spec.test_count, x_test_origin, y_test_origin),
    ):
        expected = (count, *spec.example_shape)
        if x.dtype != np.dtype(spec.dtype) or x.shape != expected:
            raise data_error(
                x_origin,
                f"holds {x.dtype} examples of shape {x.shape}, {spec.name} has"
                f" {spec.dtype} {expected}",
            )
        if y.dtype != np.int64 or y.shape != (count,):
            raise data_error(
                y_origin, f"holds {y.dtype} labels of shape {y.shape}, expected int64 ({count},)"
            )
        if count and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
            bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
            raise data_error(
                y_origin, f"label {bad} out of range 0..{spec.num_classes - 1} for {spec.name}"
            )


def _to_dataset(spec: DatasetSpec, splits: Splits, source: str) -> ArrayDataset:
    for array in splits:
        array.setflags(write=False)
    return ArrayDataset(
        name=spec.name,
        x_train=splits.x_train,
        y_train=splits.y_train,
        x_test=splits.x_test,
        y_test=splits.y_test,
        num_classes=spec.num_classes,
        source=source,
        class_names=spec.class_names,
    )


_FileKey = tuple[tuple[str, str, int, int, int], ...]


def _file_key(files: Mapping[str, Path]) -> _FileKey:
    """Identity of the files' current contents: (role, resolved path, size, mtime, inode)."""
    key = []
    for role, path in files.items():
        resolved = path.resolve()
        try:
            stat = resolved.stat()
        except OSError as exc:
            raise data_error(resolved, f"cannot stat file ({exc.strerror})") from exc
        key.append((role, str(resolved), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(key)


@lru_cache(maxsize=4)
def _decode_files(spec: DatasetSpec, directory: Path, key: _FileKey) -> _Loaded:
    assert not isinstance(spec.source, BuiltinSource)
    files = {role: Path(path) for role, path, *_ in key}
    decoded = spec.source.decode(files)
    _check_splits(spec, decoded)
    dataset = _to_dataset(spec, decoded.splits, str(directory))
    return _Loaded(dataset, directory, files, decoded.checksums)


@lru_cache(maxsize=4)
def _generate(spec: DatasetSpec) -> _Loaded:
    assert isinstance(spec.source, BuiltinSource)
    splits = spec.source.generate()
    origins = (f"built-in {spec.name}",) * 4
    _check_splits(spec, Decoded(splits, (origins[0], origins[1], origins[2], origins[3]), {}))
    return _Loaded(_to_dataset(spec, splits, "built-in"), None, {}, {})


def _load(name: str, data_dir: str | os.PathLike[str] | None) -> tuple[DatasetSpec, _Loaded]:
    spec = get_spec(name)
    if isinstance(spec.source, BuiltinSource):
        return spec, _generate(spec)
    directory, files = locate(spec.name, data_dir)
    return spec, _decode_files(spec, directory, _file_key(files))


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> ArrayDataset:
    """Load dataset ``name``, decoded and checked against its registry spec.

    Files are looked up in the order described in this module's docstring; pinned
    checksums are verified and shapes, dtypes and label ranges checked. The result is
    cached in-process and its arrays are read-only (copy before modifying in place).
    Raises DataError (one line naming the file and the problem) on any failure.
    """
    return _load(name, data_dir)[1].dataset


def clear_cache() -> None:
    """Forget every decoded dataset held in-process."""
    _decode_files.cache_clear()
    _generate.cache_clear()


def _overall_checksum(spec: DatasetSpec, checksums: Mapping[str, str]) -> str:
    if isinstance(spec.source, BuiltinSource):
        return BUILT_IN
    statuses = set(checksums.values())
    if statuses == {VERIFIED}:
        return VERIFIED
    if VERIFIED in statuses:
        verified = sum(status == VERIFIED for status in checksums.values())
        return f"partly pinned: {verified} of {len(checksums)} files verified"
    return NOT_PINNED


def dataset_info(name: str, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A JSON-able summary of dataset ``name`` as loaded (loading it if needed).

    Keys: ``name``, ``title``, ``format``, ``directory`` (``None`` for built-ins),
    ``files`` (list of ``{role, path, sha256, checksum}``), ``shapes`` (``x_train``,
    ``y_train``, ``x_test``, ``y_test`` as lists), ``dtype``, ``num_classes``,
    ``class_names``, ``class_counts`` (``train`` / ``test`` lists of length
    ``num_classes``), ``checksum`` (``"verified"``, ``"not pinned"`` or the built-in
    note) and ``url`` (canonical download base or ``None``).
    """
    spec, loaded = _load(name, data_dir)
    ds = loaded.dataset
    pinned = {} if isinstance(spec.source, BuiltinSource) else spec.source.downloads()
    return {
        "name": spec.name,
        "title": spec.title,
        "format": spec.source.kind,
        "directory": None if loaded.directory is None else str(loaded.directory),
        "files": [
            {
                "role": role,
                "path": str(path),
                "sha256": pinned[role].sha256 if role in pinned else None,
                "checksum": loaded.checksums.get(role, NOT_PINNED),
            }
            for role, path in loaded.files.items()
        ],
        "shapes": {
            "x_train": list(ds.x_train.shape),
            "y_train": list(ds.y_train.shape),
            "x_test": list(ds.x_test.shape),
            "y_test": list(ds.y_test.shape),
        },
        "dtype": str(ds.x_train.dtype),
        "num_classes": ds.num_classes,
        "class_names": list(ds.class_names),
        "class_counts": {
            "train": np.bincount(ds.y_train, minlength=ds.num_classes).tolist(),
            "test": np.bincount(ds.y_test, minlength=ds.num_classes).tolist(),
        },
        "checksum": _overall_checksum(spec, loaded.checksums),
        "url": spec.url_base,
    }


# --------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch_dataset` did.

    ``directory`` holds the dataset (``None`` for built-ins); ``downloaded`` lists the
    files written by this call (empty when everything was already there); ``checksum``
    is ``"verified"`` when every file matched a pinned SHA-256, ``"not pinned"`` when
    the download was checked by decoding and comparing shapes only.
    """

    name: str
    directory: Path | None
    downloaded: tuple[Path, ...]
    checksum: str

    @property
    def message(self) -> str:
        """One line for the user saying what was done and how it was verified."""
        if self.directory is None:
            return f"{self.name}: {self.checksum}; nothing to download"
        done = (
            f"downloaded {len(self.downloaded)} file(s) to {self.directory}"
            if self.downloaded
            else f"already present in {self.directory}"
        )
        if self.checksum == VERIFIED:
            return f"{self.name}: {done}; SHA-256 verified"
        return f"{self.name}: {done}; checksum {self.checksum}: unverified by hash (shape-checked)"


_URL_SCHEMES = ("http", "https", "file")


def _join_url(base: str, file_name: str) -> str:
    return f"{base.rstrip('/')}/{urllib.parse.quote(file_name)}"


def _network_reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return sources.describe(exc)


def _download(
    url: str, directory: Path, file_name: str, progress: ProgressCallback | None, timeout: float
) -> Path:
    """Download ``url`` into a temporary file in ``directory`` named ``...-<file_name>``.

    The caller renames it into place once verified, or deletes it.
    """
    if urllib.parse.urlsplit(url).scheme not in _URL_SCHEMES:
        raise DataError(f"{url}: unsupported URL scheme (use {', '.join(_URL_SCHEMES)})")
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".fetch-", suffix=f"-{file_name}")
    except OSError as exc:
        raise data_error(directory, f"cannot write to the cache directory ({exc})") from exc
    temp = Path(name)
    request = urllib.request.Request(url, headers={"User-Agent": f"fedmoe/{__version__}"})
    try:
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(request, timeout=timeout) as response,
        ):
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(file_name, done, total)
        if total is not None and done != total:
            raise DataError(f"{url}: download truncated: received {done} of {total} bytes")
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        temp.unlink(missing_ok=True)
        reason = _network_reason(exc)
        raise DataError(sources.one_line(f"{url}: download failed ({reason})")) from exc
    except BaseException:  # DataError, KeyboardInterrupt, ...: leave no partial file
        temp.unlink(missing_ok=True)
        raise
    return temp


def _reusable(spec: FileSpec, path: Path | None) -> bool:
    """Whether an already cached file can be kept (present, and matching if pinned)."""
    if path is None:
        return False
    if spec.sha256 is None:
        return True
    try:
        digest, size = sources.content_digest(path)
        spec.check_digest(digest, size, path)
    except DataError:
        return False
    return True


def fetch_dataset(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    url_base: str | None = None,
    *,
    progress: ProgressCallback | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> FetchResult:
    """Download dataset ``name`` into ``<cache_dir or cache_root()>/<name>`` and verify it.

    Files come from ``url_base``, else ``$FEDMOE_MIRROR``, else the canonical location.
    Each file is written to a temporary name, checked (SHA-256 of its decompressed
    contents where pinned, then the whole dataset decoded and compared with the spec)
    and only then renamed into place; a bad download is deleted and raises DataError.
    Cached files that fail their pinned checksum are replaced. Built-in datasets are
    generated instead (nothing is downloaded).
    """
    spec = get_spec(name)
    if isinstance(spec.source, BuiltinSource):
        _generate(spec)
        return FetchResult(spec.name, None, (), BUILT_IN)
    base = url_base or os.environ.get("FEDMOE_MIRROR", "").strip() or spec.url_base
    if not base:
        raise DataError(sources.one_line(f"{spec.name}: {spec.how_to_get()}"))
    root = Path(cache_dir).expanduser() if cache_dir else cache_root()
    target = root / spec.name
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise data_error(target, f"cannot create the cache directory ({exc})") from exc

    files: dict[str, Path] = {}
    pending: list[tuple[Path, Path, Path | None]] = []  # (temp, final, stale file to remove)
    try:
        for role, file_spec in spec.source.downloads().items():
            existing = file_spec.find(target)
            if _reusable(file_spec, existing):
                assert existing is not None
                files[role] = existing
                continue
            url = _join_url(base, file_spec.download_name)
            temp = _download(url, target, file_spec.download_name, progress, timeout)
            pending.append((temp, target / file_spec.download_name, existing))
            if file_spec.sha256 is not None:
                file_spec.check_digest(*sources.content_digest(temp, gzipped=True), url)
            files[role] = temp
        decoded = spec.source.decode(files)
        _check_splits(spec, decoded)
    except BaseException as exc:
        for temp, _, _ in pending:
            temp.unlink(missing_ok=True)
        if pending and isinstance(exc, DataError):
            raise DataError(f"{exc}; the downloaded files were discarded") from exc
        raise
    for temp, final, stale in pending:
        os.replace(temp, final)
        if stale is not None and stale != final:
            stale.unlink(missing_ok=True)
    return FetchResult(
        spec.name,
        target,
        tuple(final for _, final, _ in pending),
        _overall_checksum(spec, decoded.checksums),
    )
