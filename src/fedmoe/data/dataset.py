"""The in-memory form every dataset is decoded into, once."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class ClientRows:
    """Which client each example belongs to, for data that comes split among clients
    (a client-id column, a file per client): what a ``natural`` partition is made from.

    ``names``: the clients' ids as the data names them, in client order (client ``k``
    is ``names[k]``). ``train``: ``int64 (N_train,)``, the client (``0 .. K - 1``) of
    every train-split row. ``test``: ``int64 (N_test,)``, the client of every test-split
    row, or ``-1`` for a row that belongs to no client (a shared test file).
    ``global_test``: sorted ``int64`` rows of the test split that form the global test
    set (a shared test file's rows where there is one, else every row).
    """

    names: tuple[str, ...]
    train: np.ndarray
    test: np.ndarray
    global_test: np.ndarray

    @property
    def num_clients(self) -> int:
        """How many clients the data holds."""
        return len(self.names)


@dataclass(frozen=True)
class ArrayDataset:
    """A dataset's train and test splits as numpy arrays.

    ``x_*`` is one of:

    - ``uint8`` images of shape ``(N, C, H, W)`` in 0..255 (channels first; ``C == 1``
      for greyscale), or ``uint8`` arrays of any shape ``(N, ...)`` scaled alike;
    - ``float32`` signals of shape ``(N, C, L)`` or other ``float32 (N, ...)`` arrays
      (standardised with one mean and std);
    - ``float32`` tabular features of shape ``(N, F)`` (standardised per feature);
    - ``int64`` token ids of shape ``(N, L)`` in ``0 .. len(vocabulary) - 1`` (text;
      ``vocabulary`` is then non-empty; id 0 pads, id 1 is the unknown token; inputs
      are used as they are).

    ``y_*`` are ``int64`` labels in ``0 .. num_classes - 1``; ``class_names`` (empty or
    of length ``num_classes``) names them. ``source`` says where the files were found (a
    directory, a file, or ``"built-in"``). ``vocabulary`` maps token ids to tokens (text
    only, else empty). ``clients`` says which client each example belongs to when the
    data comes split among clients (else ``None``).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str
    class_names: tuple[str, ...] = field(default=())
    vocabulary: tuple[str, ...] = field(default=())
    clients: ClientRows | None = field(default=None, compare=False)

    def summary(self) -> dict[str, Any]:
        """Shapes, dtype, classes and per-class counts, as ``fedmoe data info`` shows
        them."""
        return {
            "shapes": {
                "x_train": list(self.x_train.shape),
                "y_train": list(self.y_train.shape),
                "x_test": list(self.x_test.shape),
                "y_test": list(self.y_test.shape),
            },
            "dtype": str(self.x_train.dtype),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "class_counts": {
                "train": np.bincount(self.y_train, minlength=self.num_classes).tolist(),
                "test": np.bincount(self.y_test, minlength=self.num_classes).tolist(),
            },
        }

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch axis."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def global_test(self) -> np.ndarray:
        """Rows of the test split that form the global test set: every row, unless the
        data came with a shared test file beside its clients' own (:class:`ClientRows`)."""
        if self.clients is not None:
            return self.clients.global_test
        return np.arange(len(self.y_test), dtype=np.int64)

    @property
    def vocabulary_digest(self) -> str:
        """SHA-256 (hex) of the vocabulary, one token per line ("" without one): lets a
        node show its token ids mean what everyone else's do."""
        if not self.vocabulary:
            return ""
        return hashlib.sha256("\n".join(self.vocabulary).encode()).hexdigest()
