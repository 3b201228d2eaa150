"""IFCA: several global models, each client training the one that fits it best."""

from __future__ import annotations

import numpy as np
import torch

from fedmoe.engine import ClientData, EarlyStopping, OptimizerConfig, TrainConfig, evaluate
from fedmoe.engine.objective import Classifier
from fedmoe.methods import FedAvgConfig, FedAvgServer, federate
from fedmoe.methods.fedavg import best_models
from fedmoe.methods.params import rows
from fedmoe.models import build_network


def test_each_model_averages_only_the_updates_of_the_clients_that_chose_it() -> None:
    params = {"w": torch.tensor([[0.0], [10.0], [20.0]])}
    cfg = FedAvgConfig(rounds=1, clients_per_round=4, local=TrainConfig(1, 1))
    server = FedAvgServer(params, np.arange(4), cfg, seed=0)
    updates = {"w": torch.tensor([[1.0], [3.0], [5.0], [7.0]])}
    server.aggregate(updates, torch.tensor([1, 3, 1, 1]), np.array([0, 0, 2, 2]))
    # Model 0: (1*1 + 3*3) / 4; model 1: nobody chose it, kept; model 2: (5 + 7) / 2.
    torch.testing.assert_close(server.params["w"], torch.tensor([[2.5], [10.0], [6.0]]))


def _two_tasks(clients: int, per_client: int) -> tuple[ClientData, ClientData, np.ndarray]:
    """Clients 0, 2, 4, ... label x by the sign of its first feature, the others by the
    opposite sign: no single model fits both groups, one model per group does."""
    g = torch.Generator().manual_seed(0)
    n = clients * per_client * 2
    x = torch.randn(n, 1, 4, generator=g)
    owner = torch.arange(n) // (2 * per_client)
    flipped = owner % 2 == 1
    y = ((x[:, 0, 0] > 0) ^ flipped).long()
    idx = np.arange(n).reshape(clients, 2, per_client)
    train = ClientData.from_indices(x, y, [i[0] for i in idx])
    val = ClientData.from_indices(x, y, [i[1] for i in idx])
    return train, val, np.arange(clients) % 2


def test_clustered_models_separate_clients_that_need_different_models() -> None:
    train, val, group = _two_tasks(clients=8, per_client=40)
    net = build_network("mlp", (1, 4), 2, dropout=0.0)
    local = TrainConfig(2, 10, OptimizerConfig("adam", lr=1e-2))
    cfg = FedAvgConfig(rounds=30, clients_per_round=4, local=local)
    objective = Classifier(net)

    one = federate(net, net.init(0, torch.tensor([0]), "g"), train, val, np.arange(8), cfg, 0)
    two = federate(net, net.init(0, torch.arange(2), "g"), train, val, np.arange(8), cfg, 0)
    assert all(r.clusters is None for r in one.history)
    assert all(r.clusters is not None and len(r.clusters) == 4 for r in two.history)

    chosen = best_models(objective, two.params, val).numpy()
    # Each group chose one model, and the two groups chose different ones.
    assert len(set(chosen[group == 0])) == 1 and len(set(chosen[group == 1])) == 1
    assert chosen[0] != chosen[1]
    own = rows(two.params, torch.as_tensor(chosen))
    assert float(evaluate(objective, own, val).accuracy.mean()) > 0.9
    # A single global model cannot serve both groups.
    assert float(evaluate(objective, one.params, val).accuracy.mean()) < 0.75


def test_early_stopping_keeps_every_model_of_the_best_round() -> None:
    train, val, _ = _two_tasks(clients=4, per_client=20)
    net = build_network("mlp", (1, 4), 2, dropout=0.0)
    local = TrainConfig(1, 10, OptimizerConfig("adam", lr=1e-2))
    cfg = FedAvgConfig(6, 2, local, EarlyStopping(2, 5, 0.0))
    fed = federate(net, net.init(0, torch.arange(3), "g"), train, val, np.arange(4), cfg, 0)
    assert next(iter(fed.params.values())).shape[0] == 3
    checked = [r for r in fed.history if r.val_loss is not None]
    assert [r.round for r in checked] == [1, 3, 5]
    assert fed.best_round == min(checked, key=lambda r: r.val_loss or 0.0).round
