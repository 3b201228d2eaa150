"""The engine's general per-client loss: an objective's ``client_loss`` is what trains,
client k's loss moves only client k's parameters, and the default is the mean NLL."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedmoe import rng
from fedmoe.engine import (
    Classifier,
    ClientData,
    Dropout,
    OptimizerConfig,
    TrainConfig,
    mean_nll,
    train,
)
from fedmoe.models import Params, build_network

NET = build_network("mlp", (6,), 3, dropout=0.0)
CFG = TrainConfig(3, 4, OptimizerConfig("sgd", lr=0.1))


@dataclass(frozen=True)
class Proximal:
    """Mean NLL plus (mu / 2) ||w - anchor||^2 per client (FedProx's local loss)."""

    anchor: Params
    mu: float

    def log_probs(self, params: Params, x: torch.Tensor, dropout: Dropout | None) -> torch.Tensor:
        return NET.forward(params, x)

    def client_loss(
        self,
        params: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        valid: torch.Tensor,
        dropout: Dropout | None,
    ) -> torch.Tensor:
        nll = mean_nll(self.log_probs(params, x, dropout), y, valid)
        prox = sum(((params[n] - a) ** 2).flatten(1).sum(1) for n, a in self.anchor.items())
        return nll + 0.5 * self.mu * prox


def _data(k: int) -> tuple[ClientData, Params, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=gen)
    index = [np.arange(i * 10, i * 10 + 10 - i) for i in range(k)]
    ids = torch.arange(k)
    init = NET.init(0, ids, "test/init", torch.float64, torch.device("cpu"))
    return ClientData.from_indices(x, y, index), init, rng.client_keys(0, ids, "test/train")


def _anchor(init: Params) -> Params:
    return {n: p.detach().clone() for n, p in init.items()}


def test_a_client_loss_of_mean_nll_trains_what_the_default_trains() -> None:
    data, init, keys = _data(3)
    plain = train(Classifier(NET), init, data, CFG, keys).params
    hooked = train(Proximal(_anchor(init), 0.0), init, data, CFG, keys).params
    for name in plain:
        assert torch.equal(plain[name], hooked[name])


def test_the_proximal_term_changes_training_and_pulls_towards_the_anchor() -> None:
    data, init, keys = _data(3)
    free = train(Proximal(_anchor(init), 0.0), init, data, CFG, keys).params
    held = train(Proximal(_anchor(init), 5.0), init, data, CFG, keys).params

    def distance(params: Params) -> torch.Tensor:
        return sum(((params[n] - init[n]) ** 2).flatten(1).sum(1) for n in init)

    assert bool((distance(held) < distance(free)).all())


def test_each_client_loss_moves_only_its_own_client() -> None:
    data, init, keys = _data(3)
    together = train(Proximal(_anchor(init), 1.0), init, data, CFG, keys).params
    for k in range(3):
        row = torch.tensor([k])
        alone_init = {n: p[row] for n, p in init.items()}
        alone = train(
            Proximal(_anchor(alone_init), 1.0), alone_init, data.select(row), CFG, keys[row]
        ).params
        for name in together:
            torch.testing.assert_close(together[name][k : k + 1], alone[name], rtol=0, atol=1e-12)
