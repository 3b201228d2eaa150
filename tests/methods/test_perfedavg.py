"""Per-FedAvg (FO): its rounds equal a plain per-client loop written from the paper's
first-order algorithm; the adaptation step matters; its federation resumes exactly; the
Flower app runs it as the simulator does, opt-out nodes sending nothing; bad options
are one-line errors."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pfl_toys import (
    assert_one_line_config_error,
    assert_same_models,
    batches,
    client_rows,
    federate_saving,
    federated_section,
    flower_parity,
    load,
    needs_fashion,
    toy_problem,
)

from fedmoe import rng
from fedmoe.experiment.federate import federate
from fedmoe.federation import Clients
from fedmoe.methods.base import RunSpec, federated_output
from fedmoe.methods.perfedavg import PerFedAvg, PerFedAvgOptions
from fedmoe.methods.personal import personal_model
from fedmoe.models import Model, unstack

SIZES = [13, 10, 17]
VAL = 6
BATCH = 3
LR = 0.05  # federated.lr: Per-FedAvg's alpha by default
ROUNDS = 3
EPOCHS = 2


def _problem() -> tuple[RunSpec, Clients]:
    """Three clients of unequal sizes (with 2B = 6, their last batches leave D' with
    one, two and no examples), every client in every round, float64, no dropout."""
    federated = federated_section(ROUNDS, len(SIZES), EPOCHS, BATCH, LR)
    return toy_problem(SIZES, VAL, {"federated": federated})


def _sgd_step(
    module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, at: torch.nn.Module
) -> None:
    """``module``'s parameters -= lr * grad of the NLL of ``at`` on (x, y)."""
    grads = torch.autograd.grad(F.nll_loss(at(x), y), list(at.parameters()))
    with torch.no_grad():
        for p, g in zip(module.parameters(), grads, strict=True):
            p.sub_(lr * g)


def _adapt(
    net: Model, state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, alpha: float
) -> torch.nn.Module:
    """One gradient step of size alpha on the whole training set (the personalisation)."""
    module = load(net, state)
    _sgd_step(module, x, y, alpha, module)
    return module


def _paper(
    run: RunSpec, clients: Clients, alpha: float, beta: float
) -> tuple[dict[str, torch.Tensor], list[float], dict[str, torch.Tensor]]:
    """Per-FedAvg (FO) from the paper, one plain model per client: each local step
    takes D (the first B of a batch of 2B) and D' (the rest), temp = w - alpha grad
    f(w; D), w <- w - beta grad f(temp; D'); the server averages by sample count. Returns
    the last server model, each round's validation loss (the adapted model) and the
    best round's server model."""
    net = run.net
    server = {
        n: p[0]
        for n, p in net.init(run.seed, torch.tensor([0]), "per-fedavg/init", torch.float64).items()
    }
    losses, best, best_loss = [], server, math.inf
    for round_ in range(ROUNDS):
        keys = rng.client_keys(run.seed, clients.ids, f"per-fedavg/round/{round_}")
        updates = []
        for i in range(len(SIZES)):
            x, y = client_rows(clients.train, i)
            n = len(y)
            module = load(net, server)
            for epoch in range(EPOCHS):
                for idx in batches(keys[i], epoch, n, 2 * BATCH):
                    d, d2 = idx[:BATCH], idx[BATCH:]
                    if len(d2) == 0:
                        continue  # no D': no meta-gradient
                    temp = load(net, module.state_dict())
                    _sgd_step(temp, x[d], y[d], alpha, temp)
                    _sgd_step(module, x[d2], y[d2], beta, temp)
            updates.append(module.state_dict())
        total = sum(SIZES)
        server = {
            n: sum(u[n] * (m / total) for u, m in zip(updates, SIZES, strict=True)) for n in server
        }
        loss = 0.0
        for i in range(len(SIZES)):
            adapted = _adapt(net, server, *client_rows(clients.train, i), alpha)
            vx, vy = client_rows(clients.val, i)
            with torch.no_grad():
                loss += float(F.nll_loss(adapted(vx), vy)) / len(SIZES)
        losses.append(loss)
        if loss < best_loss:
            best, best_loss = server, loss
    return server, losses, best


@pytest.mark.parametrize("alpha", [0.0, 0.2])
def test_rounds_and_personalisation_equal_the_papers_first_order_algorithm(alpha: float) -> None:
    run, clients = _problem()
    options = PerFedAvgOptions(alpha=alpha, beta=0.1)
    method = PerFedAvg()
    assert method.federated is not None
    server, state = federate(run, method.federated, options, clients, "rounds")
    step = alpha or LR  # alpha 0: the federated learning rate
    last, losses, best = _paper(run, clients, step, 0.1)
    for name, p in last.items():
        torch.testing.assert_close(server.params[name][0], p, rtol=0, atol=1e-9)
    # Early stopping scored each client's adapted global model on its validation set.
    history = [r.val_loss for r in server.history]
    assert history == pytest.approx(losses, abs=1e-9)
    # Every client adapts the best global model with one step on its training set.
    output = federated_output(server.best_params, server.summary(), state)
    personal = personal_model(method.personalise(run, options, clients, {}, output))
    for i, mine in enumerate(unstack(personal)):
        expected = _adapt(run.net, best, *client_rows(clients.train, i), step).state_dict()
        for name, p in expected.items():
            torch.testing.assert_close(mine[name], p, rtol=0, atol=1e-9)


def test_the_adaptation_step_and_beta_matter() -> None:
    run, clients = _problem()
    method = PerFedAvg()
    assert method.federated is not None

    def trained(alpha: float, beta: float) -> dict[str, torch.Tensor]:
        options = PerFedAvgOptions(alpha=alpha, beta=beta)
        assert method.federated is not None
        return federate(run, method.federated, options, clients, "rounds")[0].params

    meta = trained(0.2, 0.1)
    # alpha ~ 0: plain SGD on D' (what FedAvg with SGD would do on those batches).
    plain = trained(1e-300, 0.1)
    sgd, _, _ = _paper(run, clients, 0.0, 0.1)
    for name, p in sgd.items():
        torch.testing.assert_close(plain[name][0], p, rtol=0, atol=1e-9)
    other_beta = trained(0.2, 0.05)
    for other in (plain, other_beta):
        assert max(float((meta[n] - other[n]).abs().max()) for n in meta) > 1e-4


def test_the_federation_resumes_exactly() -> None:
    run, clients = _problem()
    method, options = PerFedAvg(), PerFedAvgOptions(beta=0.1)
    assert method.federated is not None
    whole, _ = federate(run, method.federated, options, clients, "rounds")
    saved = federate_saving(run, method.federated, options, clients)[2]
    resumed, _ = federate(run, method.federated, options, clients, "rounds", saved[0])
    assert_same_models(whole, resumed)


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"beta": 0.0}, r"method\.per-fedavg\.beta must be positive, got 0\.0"),
        ({"beta": -1}, r"method\.per-fedavg\.beta must be positive"),
        ({"alpha": -0.1}, r"method\.per-fedavg\.alpha must be >= 0 \(0: federated\.lr\)"),
        ({"alpha": "big"}, r"method\.per-fedavg\.alpha must be of type float"),
        ({"gamma": 1.0}, r"unknown key 'method\.per-fedavg\.gamma'"),
    ],
)
def test_bad_options_are_one_line_errors(section: dict[str, Any], match: str) -> None:
    assert_one_line_config_error(
        {"methods": ["per-fedavg"], "method": {"per-fedavg": section}}, match
    )


SMALL: dict[str, Any] = {
    "model": "mlp",
    "dtype": "float64",
    "methods": ["per-fedavg"],
    "partition": {"clients": 4, "train": 20, "val": 20, "test": 20, "opt_out": 0.25},
    "federated": {"rounds": 2, "clients_per_round": 2, "local_epochs": 1, "lr": 1e-2},
    "method": {"per-fedavg": {"beta": 1e-2}},
}


@needs_fashion
def test_the_flower_app_runs_it_as_the_simulator_and_opt_out_nodes_send_nothing() -> None:
    parity = flower_parity(SMALL)
    embedded = parity.embedded
    # Accuracies, the federation's history (validation of the adapted models), epochs.
    assert parity.flower["methods"]["per-fedavg"] == embedded["methods"]["per-fedavg"]
    opted_out = parity.opted_out
    assert len(opted_out) == 1
    parity.assert_opt_out_nodes_send_nothing()
    history = embedded["methods"]["per-fedavg"]["federation"]["history"]
    assert all(not set(r["clients"]) & opted_out for r in history)
