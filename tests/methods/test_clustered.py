"""IFCA: several global models, each client training the one that fits it best."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fedmoe.engine import Classifier, ClientData, evaluate
from fedmoe.experiment import config
from fedmoe.experiment.federate import federate
from fedmoe.experiment.prepare import run_spec
from fedmoe.federation import Clients, FederationServer, Update, num_models
from fedmoe.methods.base import Method, Output, RunSpec, federated_output, global_model
from fedmoe.methods.fedavg import FedAvg
from fedmoe.methods.ifca import (
    CHOICE,
    ROUTED,
    ROUTER,
    Ifca,
    IfcaOptions,
    IfcaRounds,
    RouterTarget,
    best_models,
    cluster_models,
    router_params,
)
from fedmoe.methods.params import unprefixed
from fedmoe.models import build_network


def test_each_model_averages_only_the_updates_of_the_clients_that_chose_it() -> None:
    params = {"w": torch.tensor([[0.0], [10.0], [20.0]])}
    updates = {"w": torch.tensor([[1.0], [3.0], [5.0], [7.0]])}
    update = Update(updates, choice=torch.tensor([0, 0, 2, 2]))
    new = IfcaRounds().aggregate(params, update, torch.tensor([1, 3, 1, 1]))
    # Model 0: (1*1 + 3*3) / 4; model 1: nobody chose it, kept; model 2: (5 + 7) / 2.
    torch.testing.assert_close(new["w"], torch.tensor([[2.5], [10.0], [6.0]]))


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


#: Federated settings under which two cluster models separate the toy tasks' groups.
THIRTY_ROUNDS = {
    "rounds": 30,
    "clients_per_round": 4,
    "local_epochs": 2,
    "batch_size": 10,
    "lr": 1e-2,
    "early_stopping": False,
}


def _run(federated: dict[str, Any]) -> RunSpec:
    """A run of the two-task MLP (no dropout) with the ``federated`` settings."""
    net = build_network("mlp", (1, 4), 2, dropout=0.0)
    gate_net = build_network("mlp", (1, 4), 2, gate=True, dropout=0.0)
    cfg = config.from_dict({"federated": federated, "dropout": 0.0})
    return run_spec(cfg, net, gate_net, (1, 4), 2, torch.device("cpu"))


def _federated(
    run: RunSpec, method: Method, options: Any, clients: Clients
) -> tuple[FederationServer, Output]:
    """The method's federated phase as the simulator's driver runs it (no checkpoints)."""
    assert method.federated is not None
    server, state = federate(run, method.federated, options, clients, "rounds")
    return server, federated_output(server.best_params, server.summary(), state)


def test_clustered_models_separate_clients_that_need_different_models() -> None:
    train, val, group = _two_tasks(clients=8, per_client=40)
    run = _run(THIRTY_ROUNDS)
    clients = Clients(torch.arange(8), train, val, torch.zeros(8, dtype=torch.bool))
    objective = Classifier(run.net)
    ifca, options = Ifca(), IfcaOptions(models=2)

    one, one_out = _federated(run, FedAvg(), None, clients)
    two, two_out = _federated(run, ifca, options, clients)
    assert all(r.clusters is None for r in one.history)
    assert all(r.clusters is not None and len(r.clusters) == 4 for r in two.history)
    assert all("clusters" in r for r in two_out.info["federation"]["history"])
    assert num_models(global_model(two_out)) == 2

    own = ifca.personalise(run, options, clients, {}, two_out)
    chosen = own.state[CHOICE].numpy()
    # Each client is evaluated with its model of lowest validation loss.
    assert np.array_equal(chosen, best_models(objective, global_model(two_out), val).numpy())
    # Each group chose one model, and the two groups chose different ones.
    assert len(set(chosen[group == 0])) == 1 and len(set(chosen[group == 1])) == 1
    assert chosen[0] != chosen[1]
    ev = ifca.evaluate(run, options, own, {}, val)
    assert float(ev.accuracy.mean()) > 0.9
    assert ev.scalars["model"].tolist() == chosen.tolist()
    details = ifca.details(options, {"model": [float(m) for m in chosen]})
    assert details == {
        "models": 2,
        "clients_per_model": np.bincount(chosen, minlength=2).tolist(),
        "model_of_client": chosen.tolist(),
    }
    # A single global model cannot serve both groups.
    shared = FedAvg().evaluate(run, None, one_out, {}, val)
    torch.testing.assert_close(
        shared.accuracy, evaluate(objective, global_model(one_out), val).accuracy
    )
    assert float(shared.accuracy.mean()) < 0.75


def test_early_stopping_keeps_every_model_of_the_best_round() -> None:
    train, val, _ = _two_tasks(clients=4, per_client=20)
    run = _run(
        {
            "rounds": 6,
            "clients_per_round": 2,
            "local_epochs": 1,
            "batch_size": 10,
            "lr": 1e-2,
            "stopping": {"check_every": 2, "patience": 5, "min_delta": 0.0},
        }
    )
    # Client 3 opts out: it never trains, but still picks a model.
    opt_out = torch.tensor([False, False, False, True])
    clients = Clients(torch.arange(4), train, val, opt_out)
    ifca, options = Ifca(), IfcaOptions(models=3)
    server, fed = _federated(run, ifca, options, clients)
    assert num_models(server.best_params) == 3 == num_models(global_model(fed))
    checked = [r for r in server.history if r.val_loss is not None]
    assert [r.round for r in checked] == [1, 3, 5]
    assert server.best_round == min(checked, key=lambda r: r.val_loss or 0.0).round
    assert fed.info["federation"]["best_round"] == server.best_round
    assert all(set(r.clients) <= {0, 1, 2} for r in server.history)
    for name, p in server.best_params.items():
        assert torch.equal(global_model(fed)[name], p)
    own = ifca.personalise(run, options, clients, {}, fed)
    assert own.state[CHOICE].shape == (4,)
    assert own.info == fed.info


def _two_domains(clients: int, per_client: int) -> tuple[ClientData, ClientData, ClientData]:
    """Like :func:`_two_tasks`, but the groups' inputs differ too (the second feature is
    near +2 in one group, near -2 in the other): a router can tell them apart. Returns
    the clients' training and validation data and a test set of both groups' inputs."""
    g = torch.Generator().manual_seed(1)
    n = clients * per_client * 2
    x = torch.randn(n + 400, 1, 4, generator=g)
    owner = torch.cat([torch.arange(n) // (2 * per_client), torch.arange(400)])
    flipped = owner % 2 == 1
    x[:, 0, 1] = torch.where(flipped, -2.0, 2.0) + 0.3 * x[:, 0, 1]
    y = ((x[:, 0, 0] > 0) ^ flipped).long()
    idx = np.arange(n).reshape(clients, 2, per_client)
    train = ClientData.from_indices(x, y, [i[0] for i in idx])
    val = ClientData.from_indices(x, y, [i[1] for i in idx])
    test = ClientData.common(x[n:], y[n:], clients)
    return train, val, test


@pytest.mark.parametrize("target", ["choice", "likelihood"])
def test_the_router_serves_every_group_and_leaves_the_cluster_models_unchanged(
    target: RouterTarget,
) -> None:
    train, val, test = _two_domains(clients=8, per_client=40)
    run = _run(THIRTY_ROUNDS)
    clients = Clients(torch.arange(8), train, val, torch.zeros(8, dtype=torch.bool))
    ifca = Ifca()
    plain, routed = IfcaOptions(models=2), IfcaOptions(models=2, router=target)
    _, plain_out = _federated(run, ifca, plain, clients)
    _, out = _federated(run, ifca, routed, clients)
    models = global_model(out)
    # The router's own random streams leave the cluster models as they were.
    assert cluster_models(models).keys() == global_model(plain_out).keys()
    for name, p in global_model(plain_out).items():
        torch.testing.assert_close(models[name], p, rtol=0, atol=0)
    router = router_params(models)
    assert router is not None and router_params(global_model(plain_out)) is None
    for p in unprefixed(models, ROUTER).values():
        assert p.shape[0] == 2 and torch.equal(p[0], p[1])

    own = ifca.personalise(run, routed, clients, {}, out)
    local = ifca.evaluate(run, routed, own, {}, val)
    pooled = ifca.evaluate(run, routed, own, {}, test)
    # As configured: each client's best cluster model, right on its own group only.
    assert float(local.accuracy.mean()) > 0.9
    assert float(pooled.accuracy.mean()) < 0.7
    assert list(pooled.variants) == ["best model per client (2 models)", ROUTED]
    torch.testing.assert_close(
        pooled.variants["best model per client (2 models)"].accuracy, pooled.accuracy
    )
    # The routed mixture is right on both groups' inputs.
    assert float(pooled.variants[ROUTED].accuracy.mean()) > 0.9
    assert float(local.variants[ROUTED].accuracy.mean()) > 0.9
    assert ifca.details(routed, {}, ROUTED) == {}
    # Without a router, IFCA has no variants.
    assert (
        ifca.evaluate(
            run, plain, ifca.personalise(run, plain, clients, {}, plain_out), {}, test
        ).variants
        == {}
    )


def test_the_router_is_the_mean_of_every_sampled_clients_router_in_every_row() -> None:
    server = {"w": torch.tensor([[0.0], [10.0]]), "router.v": torch.tensor([[1.0], [1.0]])}
    update = Update(
        {"w": torch.tensor([[1.0], [3.0], [5.0]]), "router.v": torch.tensor([[2.0], [4.0], [8.0]])},
        choice=torch.tensor([0, 0, 0]),
    )
    new = IfcaRounds().aggregate(server, update, torch.tensor([1, 1, 2]))
    torch.testing.assert_close(new["w"], torch.tensor([[(1.0 + 3.0 + 10.0) / 4], [10.0]]))
    torch.testing.assert_close(new["router.v"], torch.tensor([[5.5], [5.5]]))
