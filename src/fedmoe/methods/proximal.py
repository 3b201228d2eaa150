"""The proximal objective FedProx's local loss and Ditto's personal loss share: each
client's mean NLL plus ``(mu / 2) ||w - anchor||^2``, summed over every parameter
tensor, where ``anchor`` is the server model the client received this round.

The anchor travels as the engine's ``fixed`` parameters under the ``anchor.`` prefix
(:func:`anchored`), one row per client: the engine reads it but does not train it, and
the term carries its gradient ``mu (w - anchor)`` through ``w``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedmoe.engine import ClientData, Dropout, TrainConfig, TrainResult, mean_nll, train
from fedmoe.engine.train import ProgressFn
from fedmoe.methods.params import prefixed, unprefixed
from fedmoe.models import Model, Params

#: The prefix of the model the proximal term pulls towards, among ``fixed``.
ANCHOR = "anchor"


def anchored(anchor: Params) -> Params:
    """``anchor`` (stacked, one row per client) as the engine's ``fixed`` parameters of
    a :class:`Proximal` objective."""
    return prefixed(anchor, ANCHOR)


@dataclass(frozen=True)
class Proximal:
    """``net``'s log-probabilities, trained on mean NLL + ``(mu / 2) ||w - anchor||^2``
    per client (``mu >= 0``; 0 trains exactly what :class:`~fedmoe.engine.Classifier`
    trains). The parameters it sees are the trained ``w`` (``net``'s names) merged with
    the ``anchor.*`` rows (see :func:`anchored`)."""

    net: Model
    mu: float

    def log_probs(self, params: Params, x: torch.Tensor, dropout: Dropout | None) -> torch.Tensor:
        model = {s.name: params[s.name] for s in self.net.param_specs()}
        dtype = next(iter(model.values())).dtype
        mask = None if dropout is None else dropout.mask(self.net, x.shape[1], dtype)
        return self.net.forward(model, x, mask)

    def client_loss(
        self,
        params: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        valid: torch.Tensor,
        dropout: Dropout | None,
    ) -> torch.Tensor:
        nll = mean_nll(self.log_probs(params, x, dropout), y, valid)
        if self.mu == 0.0:
            return nll
        anchor = unprefixed(params, ANCHOR)
        distance = sum(((params[n] - a) ** 2).flatten(1).sum(1) for n, a in anchor.items())
        return nll + 0.5 * self.mu * distance


def train_proximal(
    net: Model,
    mu: float,
    start: Params,
    anchor: Params,
    data: ClientData,
    cfg: TrainConfig,
    keys: torch.Tensor,
    val: ClientData | None = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train K clients' ``net`` from ``start`` on the proximal objective towards
    ``anchor`` (both stacked, one row per client) with ``cfg`` and ``keys`` (see
    :func:`fedmoe.engine.train`; ``val`` for early stopping)."""
    return train(Proximal(net, mu), start, data, cfg, keys, val, progress, anchored(anchor))
