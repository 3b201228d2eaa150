"""The user's own files as datasets, named ``KIND:PATH``.

=================  ======================================================  ==============
name               what                                                    reader
=================  ======================================================  ==============
``npz:PATH``       an ``.npz`` with ``x_train, y_train, x_test, y_test``   npzfiles
``csv:PATH``       a CSV of numeric features and a label column            csvfiles
``images:DIR``     ``DIR/<class>/*.png|jpg`` or ``DIR/{train,test}/...``   imagefolder
``agnews:DIR``     ``DIR/train.csv`` and ``DIR/test.csv`` in AG News form  textcsv
``clients:DIR``    ``DIR/clients/<id>.npz`` (+ ``DIR/test.npz``)           clientfiles
=================  ======================================================  ==============

A relative ``PATH`` is taken relative to ``data_dir`` when one is given, else to the
current directory; ``~`` is expanded. How files are read is set by
:class:`~fedmoe.data.options.ReadOptions`. Decoded datasets are cached in-process, keyed
on the name, the options and every file's resolved path, size, modification time and
inode, so a changed file is read afresh. Every failure is a one-line
:class:`~fedmoe.errors.DataError` naming the file and the problem.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fedmoe.data.clientfiles import read_client_files
from fedmoe.data.csvfiles import read_csv_dataset
from fedmoe.data.dataset import ArrayDataset
from fedmoe.data.files import NOT_PINNED
from fedmoe.data.imagefolder import read_image_folder
from fedmoe.data.npzfiles import read_npz_dataset
from fedmoe.data.options import ReadOptions
from fedmoe.data.sources import data_error, describe
from fedmoe.data.textcsv import read_agnews
from fedmoe.errors import DataError

Reader = Callable[[Path, str, ReadOptions], ArrayDataset]


class UserFormat(NamedTuple):
    """One kind of user file: its reader, whether ``PATH`` is a folder, and a title."""

    read: Reader
    folder: bool
    title: str


FORMATS: Mapping[str, UserFormat] = {
    "npz": UserFormat(read_npz_dataset, False, "your .npz arrays"),
    "csv": UserFormat(read_csv_dataset, False, "your CSV of features"),
    "images": UserFormat(read_image_folder, True, "your image folders, one per class"),
    "agnews": UserFormat(read_agnews, True, "your text in the AG News CSV format"),
    "clients": UserFormat(read_client_files, True, "your files, one per client"),
}
"""The user file formats, by the ``KIND`` of their ``KIND:PATH`` names."""

_USAGE = "npz:PATH, csv:PATH, images:DIR, agnews:DIR or clients:DIR"


class UserName(NamedTuple):
    """A parsed ``KIND:PATH`` name."""

    kind: str
    path: str


def parse_name(name: str) -> UserName | None:
    """``name`` as ``KIND:PATH``, or ``None`` when it names no user files (a catalogue
    name, or a Windows drive letter's colon). DataError for an unknown ``KIND`` or an
    empty ``PATH``."""
    kind, sep, path = name.partition(":")
    kind = kind.strip().lower()
    if not sep or len(kind) <= 1:
        return None
    if kind not in FORMATS:
        raise DataError(f"unknown data format {kind!r} in {name!r}; name your files as {_USAGE}")
    if not path.strip():
        raise DataError(f"{name!r} names no path; name your files as {_USAGE}")
    return UserName(kind, path.strip())


def is_user_name(name: str) -> bool:
    """Whether ``name`` names the user's own files (``KIND:PATH``, KIND known)."""
    try:
        return parse_name(name) is not None
    except DataError:
        return False


def resolve(path: str, data_dir: str | os.PathLike[str] | None) -> Path:
    """Where ``path`` points: relative to ``data_dir`` if given, else to the current
    directory."""
    target = Path(path).expanduser()
    if not target.is_absolute() and data_dir:
        target = Path(data_dir).expanduser() / target
    return target.absolute()


_FileKey = tuple[tuple[str, int, int, int], ...]


def _file_key(path: Path) -> _FileKey:
    """Identity of the contents at ``path`` (every file under it, for a folder)."""
    try:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        key = []
        for file in files:
            stat = file.resolve().stat()
            key.append((str(file), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    except OSError as exc:
        raise data_error(path, f"cannot read ({describe(exc)})") from exc
    return tuple(key)


def _freeze(dataset: ArrayDataset) -> ArrayDataset:
    arrays = [dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test]
    if dataset.clients is not None:
        rows = dataset.clients
        arrays += [rows.train, rows.test, rows.global_test]
    for array in arrays:
        array.setflags(write=False)
    return dataset


@lru_cache(maxsize=4)
def _read(kind: str, name: str, path: Path, options: ReadOptions, key: _FileKey) -> ArrayDataset:
    return _freeze(FORMATS[kind].read(path, name, options))


def load_user_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    options: ReadOptions | None = None,
) -> ArrayDataset:
    """The user's files named ``KIND:PATH`` as an ArrayDataset (read-only arrays, cached
    in-process); its ``name`` is ``KIND:PATH`` as given, its ``source`` the resolved path."""
    user = parse_name(name)
    if user is None:
        raise DataError(f"{name!r} does not name your files; name them as {_USAGE}")
    path = resolve(user.path, data_dir)
    folder = FORMATS[user.kind].folder
    if not path.exists():
        raise data_error(path, f"no such {'folder' if folder else 'file'} (from {name!r})")
    if folder != path.is_dir():
        what = "a folder" if folder else "a file"
        raise data_error(path, f"{user.kind}:PATH names {what}, and this is not one")
    key = _file_key(path)
    return _read(user.kind, f"{user.kind}:{user.path}", path, options or ReadOptions(), key)


def clear_cache() -> None:
    """Forget every decoded user dataset held in-process."""
    _read.cache_clear()


def user_dataset_info(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    options: ReadOptions | None = None,
) -> dict[str, Any]:
    """A JSON-able summary of the user's files ``name``, with the keys of
    :func:`fedmoe.data.registry.dataset_info` plus ``options`` (how they were read),
    ``vocabulary_size`` and ``vocabulary_sha256`` (text; else 0 and ""), and ``clients``
    (data split among clients: per client its ``name`` and ``train`` / ``test`` counts;
    else ``None``) and ``global_test`` (how many test examples the global test set
    holds)."""
    ds = load_user_dataset(name, data_dir, options)
    user = parse_name(name)
    assert user is not None
    fmt = FORMATS[user.kind]
    clients = None
    if ds.clients is not None:
        rows = ds.clients
        train = np.bincount(rows.train, minlength=rows.num_clients)
        test = np.bincount(rows.test[rows.test >= 0], minlength=rows.num_clients)
        clients = [
            {"name": n, "train": int(a), "test": int(b)}
            for n, a, b in zip(rows.names, train, test, strict=True)
        ]
    return {
        "name": ds.name,
        "title": fmt.title,
        "format": user.kind,
        "directory": ds.source,
        "files": [{"role": user.kind, "path": ds.source, "sha256": None, "checksum": NOT_PINNED}],
        **ds.summary(),
        "checksum": NOT_PINNED,
        "url": None,
        "options": dataclasses.asdict(options or ReadOptions()),
        "vocabulary_size": len(ds.vocabulary),
        "vocabulary_sha256": ds.vocabulary_digest,
        "clients": clients,
        "global_test": len(ds.global_test),
    }
