"""Natural partitions: the clients come from the data (a client-id column, a file per
client), not from a synthetic partitioner.

Contract of :func:`natural_split` (wrapped by :func:`fedmoe.data.partition.make_partition`
for a :class:`NaturalSpec`):

- Client ``k`` is the data's client ``k`` (:class:`~fedmoe.data.dataset.ClientRows`,
  clients in natural order of their ids). Its local test set is every test-split row
  the data gives it; its train-split rows are split into train and validation: a
  seeded ``val_fraction`` of them (``round`` half up, at least 1, at least 1 left to
  train; no stratification) validates, the rest trains. Nothing is shared between
  clients and every row of a client is used.
- Clients may have different sizes. A client needs at least 2 train-split rows and 1
  test row, else :class:`~fedmoe.errors.PartitionError` naming it.
- The validation draw of client ``k`` is seeded by ``(seed, k)`` alone, so it does not
  depend on the other clients.
- A client's majority classes are its (up to) two most frequent training labels, the
  more frequent first (ties: the lower class); its label distribution is the label
  frequencies of its train-split rows (train and validation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np

from fedmoe.data.dataset import ClientRows
from fedmoe.errors import PartitionError

_VAL_STREAM = 5  # beside fedmoe.data.partition's streams 0..4
_SHOWN = 6


@dataclass(frozen=True, eq=False)
class NaturalSpec:
    """Partition as the data is split among clients (see the module doc).

    ``rows``: which client each example belongs to. ``val_fraction``: the share of each
    client's train-split rows that validates, in ``(0, 1)``. ``num_clients``: how many
    clients the caller expects; ``0`` takes every client the data holds, any other value
    must equal that number (a PartitionError says what the data holds).
    """

    rows: ClientRows
    val_fraction: float
    num_clients: int = 0

    scheme: ClassVar[str] = "natural"

    def __post_init__(self) -> None:
        if not isinstance(self.rows, ClientRows):
            raise PartitionError(
                f"rows must be the data's ClientRows, got {type(self.rows).__name__}"
            )
        fraction = self.val_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise PartitionError(f"val_fraction must be a number in (0, 1), got {fraction!r}")
        if not 0.0 < float(fraction) < 1.0:
            raise PartitionError(f"val_fraction must be in (0, 1), got {fraction!r}")
        object.__setattr__(self, "val_fraction", float(fraction))
        if isinstance(self.num_clients, bool) or not isinstance(self.num_clients, int):
            raise PartitionError(f"num_clients must be an integer, got {self.num_clients!r}")
        held = self.rows.num_clients
        if self.num_clients not in (0, held):
            raise PartitionError(
                f"{self.num_clients} clients asked for but the data holds {held}"
                f" ({_names(self.rows.names)}); set partition.clients = {held}, or 0 to take"
                " every client"
            )


def _names(names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (", ..." if len(names) > _SHOWN else "")


class NaturalSplit(NamedTuple):
    """Per client: sorted ``int64`` train / val rows (of the train split), test rows (of
    the test split), majority classes; and the ``(K, C)`` label distribution."""

    train: list[np.ndarray]
    val: list[np.ndarray]
    test: list[np.ndarray]
    majority: list[tuple[int, ...]]
    label_dist: np.ndarray


def _by_client(clients: np.ndarray, count: int) -> list[np.ndarray]:
    order = np.argsort(clients, kind="stable").astype(np.int64)
    sizes = np.bincount(clients[clients >= 0], minlength=count)
    start = int(np.count_nonzero(clients < 0))
    return np.split(order[start:], np.cumsum(sizes)[:-1])


def natural_split(
    spec: NaturalSpec, y_train: np.ndarray, y_test: np.ndarray, num_classes: int, seed: int
) -> NaturalSplit:
    """Every client's rows as the module doc says; ``y_train`` / ``y_test`` are the
    labels (``0 .. num_classes - 1``) of the splits ``spec.rows`` describes."""
    rows = spec.rows
    if len(rows.train) != len(y_train) or len(rows.test) != len(y_test):
        raise PartitionError(
            f"the data's client rows cover {len(rows.train)} train and {len(rows.test)} test"
            f" examples but the labels are {len(y_train)} and {len(y_test)}"
        )
    k_all = rows.num_clients
    pools, tests = _by_client(rows.train, k_all), _by_client(rows.test, k_all)
    split = NaturalSplit([], [], [], [], np.zeros((k_all, num_classes)))
    for k, (pool, test) in enumerate(zip(pools, tests, strict=True)):
        name = rows.names[k]
        if len(pool) < 2:
            raise PartitionError(
                f"client {name!r} has {len(pool)} training example(s); a client needs at least"
                " 2 (to train and to validate)"
            )
        if len(test) == 0:
            raise PartitionError(f"client {name!r} has no test examples")
        n_val = min(len(pool) - 1, max(1, math.floor(spec.val_fraction * len(pool) + 0.5)))
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_VAL_STREAM, k)))
        shuffled = pool[rng.permutation(len(pool))]
        train = np.sort(shuffled[n_val:])
        split.train.append(train)
        split.val.append(np.sort(shuffled[:n_val]))
        split.test.append(np.sort(test))
        counts = np.bincount(y_train[train], minlength=num_classes)
        ranked = np.argsort(-counts, kind="stable")[:2]
        split.majority.append(tuple(int(c) for c in ranked if counts[c] > 0))
        pool_counts = np.bincount(y_train[pool], minlength=num_classes)
        split.label_dist[k] = pool_counts / pool_counts.sum()
    return split
