"""Seeded test hold-outs for files that come without a test split."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedmoe.data.sources import data_error


def held_out_count(count: int, fraction: float) -> int:
    """How many of ``count`` examples a ``fraction`` holds out: ``round(fraction *
    count)`` (half up), but at least 1 and at most ``count - 1`` (``count >= 2``)."""
    return min(count - 1, max(1, math.floor(fraction * count + 0.5)))


def holdout_mask(
    groups: np.ndarray,
    fraction: float,
    seed: int,
    origin: str | Path,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Which examples are held out as test: a ``bool`` mask like ``groups``.

    ``groups`` holds each example's group (a client, ``0 .. G - 1``; all zeros for one
    split of the whole file). Group ``g`` holds out :func:`held_out_count` of its
    examples, drawn uniformly by a generator seeded with ``(seed, g)``, so a group's
    draw does not depend on the other groups. A group of fewer than 2 examples cannot
    hold any out: DataError naming ``origin`` (and the group by ``names[g]``).
    """
    mask = np.zeros(len(groups), dtype=np.bool_)
    if len(groups) == 0:
        return mask
    order = np.argsort(groups, kind="stable")
    present, starts, counts = np.unique(groups[order], return_index=True, return_counts=True)
    for group, start, count in zip(present, starts, counts, strict=True):
        g, n = int(group), int(count)
        if n < 2:
            who = f"client {names[g]!r} has" if names is not None else "the data has"
            raise data_error(
                origin,
                f"{who} {n} example; holding out a test share needs at least 2"
                " (or give the test examples in the files)",
            )
        rows = order[start : start + n]
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(g,)))
        mask[rows[rng.permutation(n)[: held_out_count(n, fraction)]]] = True
    return mask
