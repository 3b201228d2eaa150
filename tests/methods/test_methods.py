"""Mixture maths, FedAvg's weighting and server policy, and the methods' contracts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmoe import rng
from fedmoe.engine import ClientData, EarlyStopping, OptimizerConfig, TrainConfig, evaluate
from fedmoe.engine.objective import Dropout
from fedmoe.methods import (
    FedAvgConfig,
    FedAvgServer,
    Mixture,
    MixtureConfig,
    aggregate,
    federate,
    finetune,
    local,
    moe,
)
from fedmoe.methods.mixture import combine
from fedmoe.methods.params import prefixed
from fedmoe.models import build_network


def test_probability_mixture_is_the_weighted_sum_of_probabilities() -> None:
    g = torch.Generator().manual_seed(0)
    log_ps = torch.randn(2, 3, 5, generator=g, dtype=torch.float64).log_softmax(-1)
    log_pg = torch.randn(2, 3, 5, generator=g, dtype=torch.float64).log_softmax(-1)
    a = torch.randn(2, 3, generator=g, dtype=torch.float64)
    gate = torch.sigmoid(a).unsqueeze(-1)
    expected = (gate * log_ps.exp() + (1 - gate) * log_pg.exp()).log()
    torch.testing.assert_close(combine(log_ps, log_pg, a, "probability"), expected)
    torch.testing.assert_close(
        combine(log_ps, log_pg, a, "probability").exp().sum(-1),
        torch.ones(2, 3, dtype=torch.float64),
    )
    # A saturated gate selects one expert, without overflow.
    big = torch.full_like(a, 800.0)
    torch.testing.assert_close(combine(log_ps, log_pg, big, "probability"), log_ps)
    torch.testing.assert_close(combine(log_ps, log_pg, -big, "probability"), log_pg)
    expected_ll = gate * log_ps + (1 - gate) * log_pg
    torch.testing.assert_close(combine(log_ps, log_pg, a, "log-linear"), expected_ll)


def test_aggregate_weights_by_sample_count() -> None:
    updates = {"w": torch.tensor([[1.0, 2.0], [3.0, 6.0]]), "b": torch.tensor([[0.0], [4.0]])}
    out = aggregate(updates, torch.tensor([1, 3]))
    torch.testing.assert_close(out["w"], torch.tensor([[2.5, 5.0]]))
    torch.testing.assert_close(out["b"], torch.tensor([[3.0]]))
    with pytest.raises(ValueError):
        aggregate(updates, torch.tensor([0, 0]))


def _cfg(epochs: int = 2) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=5, optimizer=OptimizerConfig("adam", lr=1e-2))


def test_server_samples_opt_in_only_and_keeps_a_copy_of_the_best() -> None:
    params = {"w": torch.zeros(1, 2)}
    cfg = FedAvgConfig(
        rounds=5, clients_per_round=3, local=_cfg(), early_stopping=EarlyStopping(1, 2, 0.0)
    )
    opt_in = np.array([1, 4, 5, 8, 9])
    server = FedAvgServer(params, opt_in, cfg, seed=0)
    picks = [server.sample(r) for r in range(20)]
    assert all(len(p) == 3 and set(p) <= set(opt_in) for p in picks)
    assert len({tuple(p) for p in picks}) > 1
    assert np.array_equal(server.sample(3), FedAvgServer(params, opt_in, cfg, seed=0).sample(3))
    server.params = {"w": torch.ones(1, 2)}
    assert not server.record(0, [1], 1.0, 0.5)
    server.params["w"].add_(5.0)  # a live update must not change the kept best
    assert not server.record(1, [1], 2.0, 0.5)
    assert server.record(2, [1], 3.0, 0.5)  # patience 2 reached
    assert server.best_round == 0
    torch.testing.assert_close(server.best_params["w"], torch.ones(1, 2))


def test_server_validates_every_check_every_rounds_and_counts_patience_in_checks() -> None:
    cfg = FedAvgConfig(
        rounds=10, clients_per_round=1, local=_cfg(), early_stopping=EarlyStopping(3, 2, 0.0)
    )
    server = FedAvgServer({"w": torch.zeros(1, 2)}, np.array([0]), cfg, seed=0)
    assert [r for r in range(10) if server.validates(r)] == [2, 5, 8, 9]
    stops = []
    for r in range(9):
        if server.validates(r):
            stops.append(server.record(r, [0], 1.0 if r == 2 else 2.0, 0.5))
        else:
            stops.append(server.record(r, [0]))
    # Checks after rounds 2 (best), 5 and 8 (no improvement: patience 2 reached at 8).
    assert stops == [False] * 8 + [True]
    assert server.best_round == 2
    assert [h.val_loss for h in server.history[:3]] == [None, None, 1.0]


def _toy(num_clients: int = 4, per_client: int = 20) -> tuple[ClientData, ClientData, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = num_clients * per_client * 2
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 6, generator=g) + y[:, None, None].float()
    idx = np.arange(n).reshape(num_clients, 2, per_client)
    train = ClientData.from_indices(x, y, [i[0] for i in idx])
    val = ClientData.from_indices(x, y, [i[1] for i in idx])
    return train, val, torch.arange(num_clients)


def test_federate_then_personalise_runs_and_moe_respects_freezing() -> None:
    train, val, clients = _toy()
    net = build_network("mlp", (1, 6), 3)
    gate_net = build_network("mlp", (1, 6), 3, gate=True)
    init = net.init(0, torch.tensor([0]), "global/init")
    fcfg = FedAvgConfig(rounds=3, clients_per_round=2, local=_cfg(1))
    fed = federate(net, init, train, val, np.array([0, 2, 3]), fcfg, seed=0)
    assert len(fed.history) == 3
    assert all(set(r.clients) <= {0, 2, 3} for r in fed.history)
    es = EarlyStopping(check_every=1, patience=2, min_delta=0.0)
    pcfg = TrainConfig(
        epochs=4, batch_size=5, optimizer=OptimizerConfig("adam", lr=1e-2), early_stopping=es
    )
    loc = local(net, train, val, clients, pcfg, seed=0)
    ft = finetune(net, fed.params, train, val, clients, pcfg, seed=0)
    gate_only = moe(
        net,
        gate_net,
        fed.params,
        ft.params,
        train,
        val,
        clients,
        pcfg,
        MixtureConfig(train_specialist=False),
        seed=0,
    )
    for name, p in ft.params.items():
        assert torch.equal(gate_only.params[f"specialist.{name}"], p)
    full = moe(
        net, gate_net, fed.params, ft.params, train, val, clients, pcfg, MixtureConfig(), seed=0
    )
    assert set(full.params) == set(gate_only.params)
    staged = moe(
        net,
        gate_net,
        fed.params,
        ft.params,
        train,
        val,
        clients,
        pcfg,
        MixtureConfig(schedule="staged"),
        seed=0,
    )
    # Both stages' epochs count (at least one each); the joint stage moves the specialist.
    assert torch.all(staged.epochs >= 2)
    assert not torch.equal(staged.params["specialist.fc1.weight"], ft.params["fc1.weight"])
    assert not torch.equal(staged.params["gate.fc1.weight"], full.params["gate.fc1.weight"])
    for res in (loc, ft, gate_only, full, staged):
        ev = evaluate(res.objective, res.params, val)
        assert ev.accuracy.shape == (4,)
        assert torch.all(ev.loss <= res.best_loss + 1e-6)


def test_global_expert_is_frozen_and_in_eval_mode() -> None:
    net = build_network("mlp", (1, 6), 3)
    gate_net = build_network("mlp", (1, 6), 3, gate=True)
    global_params = net.init(0, torch.tensor([0]), "g")
    mix = Mixture(net, gate_net, global_params)
    params = prefixed(net.init(1, torch.arange(2), "s"), "specialist") | prefixed(
        gate_net.init(1, torch.arange(2), "gate"), "gate"
    )
    x = torch.randn(2, 4, 1, 6)
    keys = rng.client_keys(0, torch.arange(2), "d")
    _, log_pg_a, _ = mix.parts(params, x, Dropout(keys, 0))
    _, log_pg_b, _ = mix.parts(params, x, Dropout(keys, 1))
    _, log_pg_eval, _ = mix.parts(params, x, None)
    torch.testing.assert_close(log_pg_a, log_pg_b)
    torch.testing.assert_close(log_pg_a, log_pg_eval)
    assert not log_pg_a.requires_grad
