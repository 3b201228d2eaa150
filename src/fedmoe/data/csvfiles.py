"""The user's CSV files of numeric features: into an
:class:`~fedmoe.data.dataset.ArrayDataset` of ``float32 (N, F)`` features.

Layout: UTF-8 text (a leading byte-order mark is skipped; ``NAME.csv.gz`` is read
gunzipped), a header row naming the columns, then one row per example with as many
fields as the header. Columns:

- the label column (``ReadOptions.label``, default ``label``): integers or any text;
  integers already ``0 .. C - 1`` are kept, others are coded in order (see
  :mod:`fedmoe.data.labels`), the values kept as class names;
- optionally a client-id column (``ReadOptions.client``): the example's client, for a
  ``natural`` partition (client ids in natural order become clients ``0 .. K - 1``);
- optionally a ``split`` column holding ``train`` or ``test``; without one a seeded
  ``ReadOptions.test_fraction`` of the rows (of each client's, with a client column)
  is the test split;
- every other column is a feature: a finite number in every row (no missing values).

Blank lines are skipped. Row order is kept within each split.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from fedmoe.data import sources
from fedmoe.data.dataset import ArrayDataset, ClientRows
from fedmoe.data.holdout import holdout_mask
from fedmoe.data.labels import encode_text_labels, natural_sorted
from fedmoe.data.options import ReadOptions
from fedmoe.data.sources import data_error

SPLIT_COLUMN = "split"
_SHOWN_COLUMNS = 12


def decode_text(data: bytes, path: Path) -> str:
    """``data`` as UTF-8 text (a byte-order mark dropped); DataError if it is not."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise data_error(path, f"not UTF-8 text (invalid byte at offset {exc.start})") from exc


def read_rows(text: str, path: Path) -> list[tuple[int, list[str]]]:
    """Every non-blank row of CSV ``text`` with its line number (1-based, where the row
    starts)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for row in reader:
            if row:
                rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise data_error(path, f"line {reader.line_num}: malformed CSV ({exc})") from exc
    return rows


def _columns(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_SHOWN_COLUMNS])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _SHOWN_COLUMNS else "")


def _header(row: list[str], path: Path) -> list[str]:
    header = [name.strip() for name in row]
    seen: set[str] = set()
    for i, name in enumerate(header):
        if not name:
            raise data_error(path, f"line 1: column {i + 1} of the header has no name")
        if name in seen:
            raise data_error(path, f"line 1: column {name!r} appears twice in the header")
        seen.add(name)
    return header


def _column(header: list[str], name: str, what: str, option: str, path: Path) -> int:
    if name not in header:
        raise data_error(
            path,
            f"no {what} column {name!r} (columns: {_columns(header)}); name it with {option}",
        )
    return header.index(name)


def _number(cell: str, line: int, column: str, path: Path) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise data_error(
            path,
            f"line {line} column {column!r}: {cell!r} is not a number (every column but the"
            " label, client-id and split columns is a numeric feature)",
        ) from None
    if not math.isfinite(value):
        raise data_error(path, f"line {line} column {column!r}: {cell!r} is not a finite number")
    return value


def read_csv_dataset(path: Path, name: str, options: ReadOptions) -> ArrayDataset:
    """The CSV file at ``path`` as an ArrayDataset named ``name`` (see the module doc)."""
    rows = read_rows(decode_text(sources.read_file_bytes(path), path), path)
    if not rows:
        raise data_error(path, "empty file: no header row")
    header = _header(rows[0][1], path)
    label = _column(header, options.label.strip(), "label", "data.label", path)
    client = (
        _column(header, options.client.strip(), "client-id", "data.client", path)
        if options.client.strip()
        else None
    )
    split = header.index(SPLIT_COLUMN) if SPLIT_COLUMN in header else None
    special = {label, client, split} - {None}
    features = [i for i in range(len(header)) if i not in special]
    if not features:
        raise data_error(path, f"no feature columns besides {_columns(header)}")
    if len(rows) == 1:
        raise data_error(path, "no data rows after the header")

    labels: list[str] = []
    clients: list[str] = []
    is_test: list[bool] = []
    values = np.empty((len(rows) - 1, len(features)), dtype=np.float64)
    for r, (line, row) in enumerate(rows[1:]):
        if len(row) != len(header):
            raise data_error(
                path, f"line {line} has {len(row)} fields but the header has {len(header)}"
            )
        try:
            values[r] = [float(row[i]) for i in features]
        except ValueError:
            for i in features:
                _number(row[i], line, header[i], path)
        if not np.isfinite(values[r]).all():
            for i in features:
                _number(row[i], line, header[i], path)
        labels.append(row[label].strip())
        if not labels[-1]:
            raise data_error(path, f"line {line} column {header[label]!r}: empty label")
        if client is not None:
            clients.append(row[client].strip())
            if not clients[-1]:
                raise data_error(path, f"line {line} column {header[client]!r}: empty client id")
        if split is not None:
            which = row[split].strip().lower()
            if which not in ("train", "test"):
                raise data_error(
                    path,
                    f"line {line} column {SPLIT_COLUMN!r}: {row[split]!r} is neither train nor"
                    " test",
                )
            is_test.append(which == "test")

    names = natural_sorted(clients) if client is not None else []
    index = {n: k for k, n in enumerate(names)}
    codes = np.array([index[c] for c in clients], dtype=np.int64)
    if split is not None:
        test = np.array(is_test, dtype=np.bool_)
        for wanted, what in ((False, "train"), (True, "test")):
            if not (test == wanted).any():
                raise data_error(path, f"no {what} rows (column {SPLIT_COLUMN!r})")
    else:
        groups = codes if client is not None else np.zeros(len(labels), dtype=np.int64)
        test = holdout_mask(groups, options.test_fraction, options.seed, path, names or None)

    with np.errstate(over="ignore"):
        x = values.astype(np.float32)
    if not np.isfinite(x).all():
        r, c = (int(v) for v in np.argwhere(~np.isfinite(x))[0])
        raise data_error(
            path,
            f"line {rows[r + 1][0]} column {header[features[c]]!r}: beyond float32's range",
        )
    train_rows, test_rows = np.flatnonzero(~test), np.flatnonzero(test)
    encoded = encode_text_labels([labels[i] for i in train_rows], [labels[i] for i in test_rows])
    rows_of_clients = None
    if client is not None:
        rows_of_clients = ClientRows(
            names=tuple(names),
            train=codes[train_rows],
            test=codes[test_rows],
            global_test=np.arange(len(test_rows), dtype=np.int64),
        )
    return ArrayDataset(
        name=name,
        x_train=x[train_rows],
        y_train=encoded.train,
        x_test=x[test_rows],
        y_test=encoded.test,
        num_classes=len(encoded.names),
        source=str(path),
        class_names=encoded.names,
        clients=rows_of_clients,
    )
