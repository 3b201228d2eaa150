"""Labels and names of the user's data: raw labels (integers or strings) as ``int64``
codes ``0 .. C - 1`` with their class names, and the natural order of names."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

_INTEGER = re.compile(r"[+-]?\d+")
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key ordering names as people do: ``"client2"`` before ``"client10"``.

    Runs of digits compare as numbers, everything else as case-folded text; names that
    compare equal that way keep a deterministic order (the raw name breaks the tie
    where :func:`natural_sorted` is used)."""
    parts: list[tuple[int, int | str]] = []
    for i, part in enumerate(_DIGITS.split(name)):
        if i % 2:
            parts.append((0, int(part)))
        elif part:
            parts.append((1, part.casefold()))
    return tuple(parts)


def natural_sorted(names: Sequence[str]) -> list[str]:
    """``names`` without duplicates, in natural order (see :func:`natural_key`)."""
    return sorted(set(names), key=lambda n: (natural_key(n), n))


class Encoded(NamedTuple):
    """Labels as codes: ``train`` / ``test`` ``int64`` in ``0 .. len(names) - 1``."""

    train: np.ndarray
    test: np.ndarray
    names: tuple[str, ...]


def encode_integer_labels(train: np.ndarray, test: np.ndarray) -> Encoded:
    """Integer labels as codes. Labels that already are ``0 .. C - 1`` (every value in
    that range used) are kept; any others (gaps, negatives, large ids) are replaced by
    their rank among the distinct values. Class names are the original values."""
    values = np.unique(np.concatenate([train.ravel(), test.ravel()]))
    names = tuple(str(int(v)) for v in values)
    if values.size and values[0] == 0 and values[-1] == values.size - 1:
        return Encoded(train.astype(np.int64), test.astype(np.int64), names)
    return Encoded(
        np.searchsorted(values, train).astype(np.int64),
        np.searchsorted(values, test).astype(np.int64),
        names,
    )


def is_integer_text(values: Sequence[str]) -> bool:
    """Whether every value reads as a decimal integer (``"3"``, ``"-1"``, ``"+7"``)."""
    return all(_INTEGER.fullmatch(v) for v in values)


def encode_text_labels(train: Sequence[str], test: Sequence[str]) -> Encoded:
    """Labels read as text (a CSV column): integers when every value is one (then as
    :func:`encode_integer_labels`), else strings, coded in natural order of the names."""
    if is_integer_text(train) and is_integer_text(test):
        numbers = [[int(v) for v in part] for part in (train, test)]
        values = sorted({v for part in numbers for v in part})
        rank = {v: i for i, v in enumerate(values)}  # the identity for 0 .. C - 1
        codes = [np.array([rank[v] for v in part], dtype=np.int64) for part in numbers]
        return Encoded(codes[0], codes[1], tuple(str(v) for v in values))
    names = natural_sorted([*train, *test])
    index = {name: i for i, name in enumerate(names)}
    return Encoded(
        np.array([index[v] for v in train], dtype=np.int64),
        np.array([index[v] for v in test], dtype=np.int64),
        tuple(names),
    )
