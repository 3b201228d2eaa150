"""Text classification data in the AG News CSV format: into an
:class:`~fedmoe.data.dataset.ArrayDataset` of ``int64 (N, max_length)`` token ids.

Layout: ``DIR/train.csv`` and ``DIR/test.csv`` (UTF-8, no header), one example per
row with three fields: the class index (1-based), the title and the description;
optionally ``DIR/classes.txt``, one class name per line (as the AG News release ships
it; without it the classes are named by their index, and indices no row uses are
skipped).

Each text is ``title + " " + description``, split by :func:`tokenize`; the vocabulary
is built from the *train* split only (:func:`build_vocabulary`) and every text is
encoded to exactly ``max_length`` ids (:func:`encode`). The vocabulary is kept in the
dataset (``ArrayDataset.vocabulary``, id ``i`` is ``vocabulary[i]``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from fedmoe.data import sources
from fedmoe.data.csvfiles import decode_text, read_rows
from fedmoe.data.dataset import ArrayDataset
from fedmoe.data.labels import encode_integer_labels
from fedmoe.data.options import ReadOptions
from fedmoe.data.sources import data_error

PAD, UNKNOWN = "<pad>", "<unk>"
"""Tokens of ids 0 (padding) and 1 (a token outside the vocabulary)."""
PAD_ID, UNKNOWN_ID = 0, 1

_TOKEN = re.compile(r"\w+|[^\w\s]")
_FIELDS = 3
_MAX_INDEX = 2**62


def tokenize(text: str) -> list[str]:
    """Lower-case ``text``, separate punctuation and split on whitespace: the tokens are
    runs of letters, digits and ``_``, and single other non-blank characters."""
    return _TOKEN.findall(text.lower())


def build_vocabulary(texts: Iterable[str], vocab_size: int) -> tuple[str, ...]:
    """``(PAD, UNKNOWN, *tokens)``: the ``vocab_size`` most frequent tokens of ``texts``,
    most frequent first, ties in alphabetical order."""
    counts = Counter(token for text in texts for token in tokenize(text))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return (PAD, UNKNOWN, *(token for token, _ in ranked[:vocab_size]))


def encode(texts: Sequence[str], vocabulary: Sequence[str], max_length: int) -> np.ndarray:
    """``int64 (len(texts), max_length)`` ids: each text's first ``max_length`` tokens
    (``UNKNOWN_ID`` outside the vocabulary), padded with ``PAD_ID`` at the end."""
    ids = {token: i for i, token in enumerate(vocabulary) if i > UNKNOWN_ID}
    out = np.full((len(texts), max_length), PAD_ID, dtype=np.int64)
    for row, text in enumerate(texts):
        tokens = tokenize(text)[:max_length]
        out[row, : len(tokens)] = [ids.get(token, UNKNOWN_ID) for token in tokens]
    return out


def _class_names(path: Path) -> tuple[str, ...] | None:
    if not path.is_file():
        return None
    names = tuple(
        line.strip() for line in decode_text(sources.read_file_bytes(path), path).splitlines()
    )
    names = tuple(n for n in names if n)
    if not names:
        raise data_error(path, "names no classes")
    return names


def _read_split(path: Path, names: tuple[str, ...] | None) -> tuple[list[str], np.ndarray]:
    """Texts and class indices (1-based, as written) of one AG News CSV file."""
    if not path.is_file():
        raise data_error(path, "missing (AG News data needs train.csv and test.csv)")
    texts: list[str] = []
    labels: list[int] = []
    for line, row in read_rows(decode_text(sources.read_file_bytes(path), path), path):
        if len(row) != _FIELDS:
            raise data_error(
                path,
                f"line {line} has {len(row)} columns; AG News rows have 3 (class index,"
                " title, description)",
            )
        index = row[0].strip()
        if not (index.isascii() and index.isdigit() and 1 <= int(index) <= _MAX_INDEX):
            raise data_error(
                path, f"line {line}: class index {row[0]!r} is not an integer in 1..{_MAX_INDEX}"
            )
        if names is not None and int(index) > len(names):
            raise data_error(
                path, f"line {line}: class index {index} but classes.txt names {len(names)}"
            )
        labels.append(int(index))
        texts.append(f"{row[1]} {row[2]}")
    if not texts:
        raise data_error(path, "holds no examples")
    return texts, np.array(labels, dtype=np.int64)


def read_agnews(directory: Path, name: str, options: ReadOptions) -> ArrayDataset:
    """The AG News-format folder ``directory`` as an ArrayDataset (see the module doc)."""
    if not directory.is_dir():
        raise data_error(directory, "not a folder (expected DIR/train.csv and DIR/test.csv)")
    names = _class_names(directory / "classes.txt")
    train_texts, y_train = _read_split(directory / "train.csv", names)
    test_texts, y_test = _read_split(directory / "test.csv", names)
    if names is None:  # classes named by their index; unused indices are skipped
        y_train, y_test, names = encode_integer_labels(y_train, y_test)
    else:
        y_train, y_test = y_train - 1, y_test - 1
    vocabulary = build_vocabulary(train_texts, options.vocab_size)
    return ArrayDataset(
        name=name,
        x_train=encode(train_texts, vocabulary, options.max_length),
        y_train=y_train,
        x_test=encode(test_texts, vocabulary, options.max_length),
        y_test=y_test,
        num_classes=len(names),
        source=str(directory),
        class_names=names,
        vocabulary=vocabulary,
    )
