"""What the engine trains: a differentiable map from parameters and inputs to log-probs.

A method declares an :class:`Objective`; the engine trains its parameters with each
client's mean negative log-likelihood of the labels under those log-probabilities, or,
when the objective defines ``client_loss`` (:class:`ClientLoss`), with that per-client
loss (a proximal term, a two-model loss, a regulariser). Validation (early stopping)
always scores the log-probabilities' NLL. Frozen parameters (a global expert, say) live
inside the objective, not in the trained dict. An objective may also mend its
parameters after each step (:class:`AfterStep`, a projection), step some of them with
their own optimiser settings (:class:`OwnOptimizers`, a learned scalar's learning rate)
or take each step itself (:class:`OwnStep`, inner iterations per batch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from fedmoe import rng
from fedmoe.engine.optim import OptimizerConfig
from fedmoe.models import Model, Params


@dataclass(frozen=True)
class Dropout:
    """The dropout draw for one training step of K clients.

    ``keys``: int64 ``(K,)`` per-client keys; ``counter``: the step's counter. A method
    with several stochastic networks asks for a distinct ``slot`` for each.
    """

    keys: torch.Tensor
    counter: int

    def mask(
        self, net: Model, batch: int, dtype: torch.dtype, slot: int = 0
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


@runtime_checkable
class ClientLoss(Protocol):
    """An objective with its own training loss."""

    def client_loss(
        self,
        params: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        valid: torch.Tensor,
        dropout: Dropout | None,
    ) -> torch.Tensor:
        """Each client's loss on one batch ``(K,)``: ``x`` ``(K, B, *shape)``, labels
        ``y`` and real-example mask ``valid`` ``(K, B)``. Client k's loss may depend only
        on client k's rows of ``params`` (the engine sums them to get every client's own
        gradient)."""
        ...


@runtime_checkable
class AfterStep(Protocol):
    """An objective whose trained parameters must be mended after each optimiser step
    (a projection onto a constraint set, say)."""

    def after_step(self, params: Params, active: torch.Tensor) -> None:
        """Change ``params`` (the live trained parameters, stacked) in place, under
        ``torch.no_grad``; ``active`` (bool ``(K,)``) says which clients just stepped
        (the others must stay untouched)."""
        ...


@runtime_checkable
class OwnOptimizers(Protocol):
    """An objective some of whose trained parameters step with their own optimiser
    settings (a learned scalar with its own plain SGD step, say)."""

    def optimizers(self, default: OptimizerConfig) -> Mapping[str, OptimizerConfig]:
        """The settings of the trained parameters named here; the others step with
        ``default`` (the training's own)."""
        ...


@runtime_checkable
class OwnStep(Protocol):
    """An objective that takes its own training step instead of the engine's
    gradient and optimiser step (an algorithm with inner iterations per batch, say).
    The engine still draws batches, masks padded clients, validates and stops early."""

    def own_step(
        self,
        params: Params,
        fixed: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        valid: torch.Tensor,
        dropout: Dropout | None,
    ) -> None:
        """Update ``params`` (the live trained parameters, stacked) in place for one
        batch; ``fixed``: the per-client parameters that are read but not trained.
        Clients with no valid example in the batch (``valid.any(1)`` false) must stay
        untouched."""
        ...


def mean_nll(log_probs: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Each client's mean NLL over its valid examples ``(K,)`` (0 for a client with
    none)."""
    losses = -log_probs.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, losses, 0.0).sum(1) / valid.sum(1).clamp(min=1)


def client_losses(
    objective: Objective,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    valid: torch.Tensor,
    dropout: Dropout | None,
) -> torch.Tensor:
    """The per-client training loss ``(K,)`` of ``objective``: its ``client_loss`` if it
    has one, else :func:`mean_nll` of its log-probabilities."""
    if isinstance(objective, ClientLoss):
        return objective.client_loss(params, x, y, valid, dropout)
    return mean_nll(objective.log_probs(params, x, dropout), y, valid)


def _float_dtype(params: Params) -> torch.dtype:
    """The parameters' dtype: dropout masks follow it, not the inputs' (token ids are
    integers)."""
    return next(iter(params.values())).dtype


@dataclass(frozen=True)
class Classifier:
    """A single network trained on its own log-probabilities."""

    net: Model

    def log_probs(self, params: Params, x: torch.Tensor, dropout: Dropout | None) -> torch.Tensor:
        mask = None if dropout is None else dropout.mask(self.net, x.shape[1], _float_dtype(params))
        return self.net.forward(params, x, mask)
