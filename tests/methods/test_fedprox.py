"""FedProx: its hooks train what a plain per-client loop written from the paper trains,
its proximal term matters (mu = 0 is FedAvg), a federation resumes exactly, the Flower
app gives the simulator's results with opt-out nodes sending nothing, bad options fail
in one line."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from pfl_toys import (
    assert_one_line_config_error,
    assert_same_models,
    blocks,
    federate_saving,
    federated_section,
    flower_parity,
    hook_rounds,
    needs_fashion,
    plain_train,
    toy_clients,
    toy_examples,
    toy_run,
    weighted_mean,
)

from fedmoe import rng
from fedmoe.experiment.federate import federate
from fedmoe.federation import Clients
from fedmoe.methods import RunSpec
from fedmoe.methods.base import Federated
from fedmoe.methods.fedavg import FedAvg
from fedmoe.methods.fedprox import FedProx, FedProxOptions
from fedmoe.models import Params

SIZES = [12, 17, 9, 15]


def _problem() -> tuple[Clients, torch.Tensor, torch.Tensor, list[np.ndarray]]:
    """Four clients of unequal sizes on random (1, 8, 8) inputs; returns the clients
    and the raw examples with each client's training rows."""
    x, y = toy_examples(2 * sum(SIZES))
    train = blocks(SIZES)
    return toy_clients(x, y, train, blocks(SIZES, sum(SIZES))), x, y, train


def _run(**federated: Any) -> RunSpec:
    settings = federated_section(3, len(SIZES), 2, 5, 1e-2, optimizer="adam", weight_decay=1e-3)
    return toy_run({"federated": settings | federated})


def _rounds(run: RunSpec, hooks: Federated, options: Any, clients: Clients) -> list[Params]:
    """The server model after each round, through the method's hooks alone."""
    return [server for server, _ in hook_rounds(run, hooks, options, clients)]


def _paper_fedprox(
    run: RunSpec,
    init: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    train: list[np.ndarray],
    mu: float,
) -> list[dict[str, torch.Tensor]]:
    """FedProx (Li et al., 2020, Algorithm 2) with every client sampled: each client
    minimises F_k(w) + mu/2 ||w - w^t||^2 from w^t with the local optimiser for E
    epochs; w^{t+1} is the sample-weighted mean. Batches in the engine's order."""
    local = run.federation.local
    o, b = local.optimizer, local.batch_size
    w = {n: t.clone() for n, t in init.items()}
    history = []
    for r in range(run.federation.rounds):
        keys = rng.client_keys(run.seed, torch.arange(len(train)), f"fedavg/round/{r}")
        trained = [
            plain_train(w, x[rows], y[rows], keys[k], local.epochs, b, o, anchor=w, lam=mu)
            for k, rows in enumerate(train)
        ]
        w = weighted_mean(trained, [len(rows) for rows in train])
        history.append(w)
    return history


def test_fedprox_equals_the_papers_algorithm_written_as_a_plain_loop() -> None:
    clients, x, y, train = _problem()
    run = _run()
    options = FedProxOptions(mu=0.5)
    hooks = FedProx.federated
    assert hooks is not None
    init = {n: p[0] for n, p in hooks.init(run, options, clients.device).items()}
    expected = _paper_fedprox(run, init, x, y, train, options.mu)
    got = _rounds(run, hooks, options, clients)
    for r, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        for name, tensor in theirs.items():
            torch.testing.assert_close(mine[name][0], tensor, rtol=0, atol=1e-9, msg=f"round {r}")


def test_the_proximal_term_matters_and_mu_zero_is_fedavg() -> None:
    clients, *_ = _problem()
    run = _run(rounds=2)
    hooks, fedavg = FedProx.federated, FedAvg.federated
    assert hooks is not None and fedavg is not None
    init = hooks.init(run, None, clients.device)
    plain = _rounds(run, fedavg, None, clients)[-1]
    free = _rounds(run, hooks, FedProxOptions(mu=0.0), clients)[-1]
    held = _rounds(run, hooks, FedProxOptions(mu=1.0), clients)[-1]
    for name in init:
        assert torch.equal(free[name], plain[name]), name
    assert any(not torch.allclose(held[n], free[n], rtol=0, atol=1e-6) for n in init)

    def moved(params: Params) -> float:
        return float(sum(((params[n] - init[n]) ** 2).sum() for n in init))

    assert moved(held) < moved(free)  # the term pulls towards the received models


def test_a_federation_resumed_mid_way_equals_an_uninterrupted_one() -> None:
    clients, *_ = _problem()
    run = _run(rounds=3, clients_per_round=2)
    hooks, options = FedProx.federated, FedProxOptions(mu=0.1)
    assert hooks is not None
    whole, _ = federate(run, hooks, options, clients, "rounds")
    saved = federate_saving(run, hooks, options, clients)[2]
    resumed, _ = federate(run, hooks, options, clients, "rounds", saved[0])
    assert_same_models(whole, resumed)


SMALL: dict[str, Any] = {
    "model": "mlp",
    "dtype": "float64",
    "methods": ["fedprox"],
    "partition": {"clients": 5, "train": 20, "val": 20, "test": 20, "opt_out": 0.4},
    "federated": {"rounds": 2, "clients_per_round": 2, "local_epochs": 2, "lr": 1e-2},
    "personalise": {"epochs": 2, "lr": 1e-3, "stopping": {"check_every": 1, "patience": 1}},
    "method": {"fedprox": {"mu": 1.0}},
}


@needs_fashion
def test_fedprox_on_the_flower_app_equals_the_simulator_and_opt_out_nodes_send_nothing() -> None:
    parity = flower_parity(SMALL, restore_threads=True)
    embedded = parity.embedded
    assert parity.flower["methods"]["fedprox"] == embedded["methods"]["fedprox"]
    # Every client, opt-out ones included, is scored with the one global model.
    entry = embedded["methods"]["fedprox"]
    assert entry["epochs"] is None and len(entry["local_test"]["per_client"]) == 5
    assert len(parity.opted_out) == 2
    parity.assert_opt_out_nodes_send_nothing()


@pytest.mark.parametrize(
    ("mu", "message"),
    [(-0.5, "method.fedprox.mu must be a finite number >= 0, got -0.5"), (math.nan, "got nan")],
)
def test_a_bad_mu_is_a_one_line_config_error(mu: float, message: str) -> None:
    data = {"methods": ["fedprox"], "method": {"fedprox": {"mu": mu}}}
    assert_one_line_config_error(data, message)
    assert_one_line_config_error({"methods": ["fedprox"], "method": {"fedprox": {"nu": 1.0}}})
    assert FedProxOptions().mu == 0.01
