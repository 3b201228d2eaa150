"""Finding and loading the named datasets (:mod:`fedmoe.data.catalogue`).

A dataset's files are checked against its spec: per file the SHA-256 of the
*decompressed* contents where one has been verified (otherwise by decoding and comparing
shapes only, reported as ``"not pinned"``), then shapes, dtypes and label ranges.

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

Names of the form ``KIND:PATH`` are the user's own files, read by
:mod:`fedmoe.data.userdata` (no lookup, no checksums).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fedmoe.data import sources, userdata
from fedmoe.data.catalogue import DatasetSpec, get_spec
from fedmoe.data.dataset import ArrayDataset
from fedmoe.data.files import BUILT_IN, NOT_PINNED, VERIFIED, BuiltinSource, Decoded
from fedmoe.data.options import ReadOptions
from fedmoe.data.sources import Splits, data_error
from fedmoe.errors import DataError

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
class Loaded:
    """A decoded dataset, where its files are (``None`` for built-ins) and their checksum
    statuses by role."""

    dataset: ArrayDataset
    directory: Path | None
    files: dict[str, Path]
    checksums: dict[str, str]


def check_splits(spec: DatasetSpec, decoded: Decoded) -> None:
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
def _decode_files(spec: DatasetSpec, directory: Path, key: _FileKey) -> Loaded:
    assert not isinstance(spec.source, BuiltinSource)
    files = {role: Path(path) for role, path, *_ in key}
    decoded = spec.source.decode(files)
    check_splits(spec, decoded)
    dataset = _to_dataset(spec, decoded.splits, str(directory))
    return Loaded(dataset, directory, files, decoded.checksums)


@lru_cache(maxsize=4)
def generated(spec: DatasetSpec) -> Loaded:
    assert isinstance(spec.source, BuiltinSource)
    splits = spec.source.generate()
    origins = (f"built-in {spec.name}",) * 4
    check_splits(spec, Decoded(splits, (origins[0], origins[1], origins[2], origins[3]), {}))
    return Loaded(_to_dataset(spec, splits, "built-in"), None, {}, {})


def _load(name: str, data_dir: str | os.PathLike[str] | None) -> tuple[DatasetSpec, Loaded]:
    spec = get_spec(name)
    if isinstance(spec.source, BuiltinSource):
        return spec, generated(spec)
    directory, files = locate(spec.name, data_dir)
    return spec, _decode_files(spec, directory, _file_key(files))


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    options: ReadOptions | None = None,
) -> ArrayDataset:
    """Load dataset ``name``, decoded and checked against its registry spec.

    Files are looked up in the order described in this module's docstring; pinned
    checksums are verified and shapes, dtypes and label ranges checked. A name of the
    form ``KIND:PATH`` (``npz:``, ``csv:``, ``images:``, ``agnews:``, ``clients:``)
    reads the user's own files instead, as ``options`` says (see
    :mod:`fedmoe.data.userdata`; ``options`` is ignored for the catalogue's names). The
    result is cached in-process and its arrays are read-only (copy before modifying in
    place). Raises DataError (one line naming the file and the problem) on any failure.
    """
    if userdata.parse_name(name) is not None:
        return userdata.load_user_dataset(name, data_dir, options)
    return _load(name, data_dir)[1].dataset


def clear_cache() -> None:
    """Forget every decoded dataset held in-process."""
    _decode_files.cache_clear()
    generated.cache_clear()
    userdata.clear_cache()


def overall_checksum(spec: DatasetSpec, checksums: Mapping[str, str]) -> str:
    """One status for a dataset from its files' statuses."""
    if isinstance(spec.source, BuiltinSource):
        return BUILT_IN
    statuses = set(checksums.values())
    if statuses == {VERIFIED}:
        return VERIFIED
    if VERIFIED in statuses:
        verified = sum(status == VERIFIED for status in checksums.values())
        return f"partly pinned: {verified} of {len(checksums)} files verified"
    return NOT_PINNED


def dataset_info(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    options: ReadOptions | None = None,
) -> dict[str, Any]:
    """A JSON-able summary of dataset ``name`` as loaded (loading it if needed).

    For the user's own files (``KIND:PATH``) see
    :func:`fedmoe.data.userdata.user_dataset_info` (the same keys and a few more).

    Keys: ``name``, ``title``, ``format``, ``directory`` (``None`` for built-ins),
    ``files`` (list of ``{role, path, sha256, checksum}``), ``shapes`` (``x_train``,
    ``y_train``, ``x_test``, ``y_test`` as lists), ``dtype``, ``num_classes``,
    ``class_names``, ``class_counts`` (``train`` / ``test`` lists of length
    ``num_classes``), ``checksum`` (``"verified"``, ``"not pinned"`` or the built-in
    note) and ``url`` (canonical download base or ``None``).
    """
    if userdata.parse_name(name) is not None:
        return userdata.user_dataset_info(name, data_dir, options)
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
        **ds.summary(),
        "checksum": overall_checksum(spec, loaded.checksums),
        "url": spec.url_base,
    }
