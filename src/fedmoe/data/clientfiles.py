"""Data that comes as one file per client: ``DIR/clients/<id>.npz``, into an
:class:`~fedmoe.data.dataset.ArrayDataset` with :class:`~fedmoe.data.dataset.ClientRows`.

Each client file holds ``x_train`` and ``y_train`` and optionally ``x_test`` and
``y_test`` (both or neither; arrays as in :mod:`fedmoe.data.npzfiles`). Clients are the
files' names without ``.npz``, in natural order (``2`` before ``10``). A client without
test arrays holds out a seeded ``ReadOptions.test_fraction`` of its examples as its
local test set. ``DIR/test.npz`` (``x_test``, ``y_test``), if present, is the global
test set; without it the global test set is the union of the clients' test sets.
Every file must hold examples of one shape and dtype; labels are coded over all files
together (see :func:`fedmoe.data.labels.encode_integer_labels`).

The train split is every client's training examples, client after client; the test
split is ``test.npz``'s examples (belonging to no client) then every client's test set.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from fedmoe.data.dataset import ArrayDataset, ClientRows
from fedmoe.data.holdout import holdout_mask
from fedmoe.data.labels import encode_integer_labels, natural_key
from fedmoe.data.npzfiles import Examples, check_same_inputs, read_npz, split_examples
from fedmoe.data.options import ReadOptions
from fedmoe.data.sources import data_error, describe

CLIENTS_FOLDER = "clients"
GLOBAL_TEST = "test.npz"


def client_files(directory: Path) -> list[Path]:
    """``DIR/clients/*.npz`` in natural order of the client ids."""
    folder = directory / CLIENTS_FOLDER
    if not folder.is_dir():
        raise data_error(directory, f"no {CLIENTS_FOLDER}/ folder (expected DIR/clients/<id>.npz)")
    try:
        files = [p for p in folder.iterdir() if p.suffix.lower() == ".npz" and p.is_file()]
    except OSError as exc:
        raise data_error(folder, f"cannot list folder ({describe(exc)})") from exc
    if not files:
        raise data_error(folder, "holds no <id>.npz client files")
    files.sort(key=lambda p: (natural_key(p.stem), p.stem))
    for before, after in itertools.pairwise(files):
        if before.stem == after.stem:
            raise data_error(after, f"names client {after.stem!r} as {before.name} does")
    return files


def _client(path: Path, options: ReadOptions, k: int) -> tuple[Examples, Examples]:
    arrays = read_npz(path, ("x_train", "y_train"), ("x_test", "y_test"))
    if ("x_test" in arrays) != ("y_test" in arrays):
        has, lacks = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
        raise data_error(path, f"holds {has} but no {lacks} (give both or neither)")
    train = split_examples(arrays, path, "train")
    if len(train.x) == 0:
        raise data_error(f"{path} (x_train)", "holds no examples")
    if "x_test" in arrays:
        test = split_examples(arrays, path, "test")
        if len(test.x) == 0:
            raise data_error(f"{path} (x_test)", "holds no examples")
        return train, test
    groups = np.full(len(train.y), k, dtype=np.int64)
    held = holdout_mask(groups, options.test_fraction, options.seed, path)
    return Examples(train.x[~held], train.y[~held]), Examples(train.x[held], train.y[held])


def read_client_files(directory: Path, name: str, options: ReadOptions) -> ArrayDataset:
    """The client files under ``directory`` as an ArrayDataset (see the module doc)."""
    if not directory.is_dir():
        raise data_error(directory, "not a folder (expected DIR/clients/<id>.npz)")
    files = client_files(directory)
    parts = [_client(path, options, k) for k, path in enumerate(files)]
    reference, ref_origin = parts[0][0].x, f"{files[0]} (x_train)"
    for path, (train, test) in zip(files, parts, strict=True):
        check_same_inputs(train.x, f"{path} (x_train)", reference, ref_origin)
        check_same_inputs(test.x, f"{path} (x_test)", reference, ref_origin)
    shared: Examples | None = None
    shared_path = directory / GLOBAL_TEST
    if shared_path.is_file():
        shared = split_examples(read_npz(shared_path, ("x_test", "y_test")), shared_path, "test")
        if len(shared.x) == 0:
            raise data_error(f"{shared_path} (x_test)", "holds no examples")
        check_same_inputs(shared.x, f"{shared_path} (x_test)", reference, ref_origin)
    tests = ([shared] if shared is not None else []) + [test for _, test in parts]
    encoded = encode_integer_labels(
        np.concatenate([train.y for train, _ in parts]), np.concatenate([t.y for t in tests])
    )
    n_shared = 0 if shared is None else len(shared.y)
    test_clients = np.concatenate(
        [np.full(n_shared, -1, dtype=np.int64)]
        + [np.full(len(test.y), k, dtype=np.int64) for k, (_, test) in enumerate(parts)]
    )
    rows = ClientRows(
        names=tuple(path.stem for path in files),
        train=np.concatenate(
            [np.full(len(train.y), k, dtype=np.int64) for k, (train, _) in enumerate(parts)]
        ),
        test=test_clients,
        global_test=np.arange(n_shared or len(test_clients), dtype=np.int64),
    )
    return ArrayDataset(
        name=name,
        x_train=np.concatenate([train.x for train, _ in parts]),
        y_train=encoded.train,
        x_test=np.concatenate([t.x for t in tests]),
        y_test=encoded.test,
        num_classes=len(encoded.names),
        source=str(directory),
        class_names=encoded.names,
        clients=rows,
    )
