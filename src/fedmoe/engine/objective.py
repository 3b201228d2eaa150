"""What the engine trains: a differentiable map from parameters and inputs to log-probs.

A method declares an :class:`Objective`; the engine trains its parameters with the
negative log-likelihood of the labels under those log-probabilities. Frozen parameters
(a global expert, say) live inside the objective, not in the trained dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from fedmoe import rng
from fedmoe.models import Network, Params


@dataclass(frozen=True)
class Dropout:
    """The dropout draw for one training step of K clients.

    ``keys``: int64 ``(K,)`` per-client keys; ``counter``: the step's counter. A method
    with several stochastic networks asks for a distinct ``slot`` for each.
    """

    keys: torch.Tensor
    counter: int

    def mask(
        self, net: Network, batch: int, dtype: torch.dtype, slot: int = 0
    ) -> torch.Tensor | None:
        """An inverted-dropout mask for ``net``, or ``None`` if it has no dropout."""
        if net.dropout == 0.0:
            return None
        keys = self.keys if slot == 0 else rng.subkeys(self.keys, 100 + slot)
        return net.dropout_mask(keys, self.counter, batch, dtype)


class Objective(Protocol):
    """Log-probabilities of K clients' models on their own inputs."""

    def log_probs(self, params: Params, x: torch.Tensor, dropout: Dropout | None) -> torch.Tensor:
        """``x``: ``(K, B, *shape)``; returns ``(K, B, classes)``. ``dropout`` is ``None``
        in evaluation mode."""
        ...


@dataclass(frozen=True)
class Classifier:
    """A single network trained on its own log-probabilities."""

    net: Network

    def log_probs(self, params: Params, x: torch.Tensor, dropout: Dropout | None) -> torch.Tensor:
        mask = None if dropout is None else dropout.mask(self.net, x.shape[1], x.dtype)
        return self.net.forward(params, x, mask)
