"""The in-memory form every dataset is decoded into, once."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ArrayDataset:
    """A dataset's train and test splits as numpy arrays.

    ``x_*`` are ``uint8`` images of shape ``(N, C, H, W)`` in 0..255 (channels first;
    ``C == 1`` for greyscale) or ``float32`` signals of shape ``(N, C, L)``.
    ``y_*`` are ``int64`` labels in ``0 .. num_classes - 1``.
    ``source`` says where the files were found (a directory, or ``"built-in"``).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str
    class_names: tuple[str, ...] = field(default=())

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch axis."""
        return tuple(int(d) for d in self.x_train.shape[1:])
