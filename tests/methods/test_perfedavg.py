"""Per-FedAvg (FO): its rounds equal a plain per-client loop written from the paper's
first-order algorithm; the adaptation step matters; its federation resumes exactly; the
Flower app runs it as the simulator does, opt-out nodes sending nothing; bad options
are one-line errors."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmoe import rng
from fedmoe.engine import ClientData, batch_order
from fedmoe.errors import ConfigError
from fedmoe.experiment import config
from fedmoe.experiment.federate import federate
from fedmoe.experiment.prepare import run_spec
from fedmoe.experiment.run import run_experiment
from fedmoe.federation import Clients, FederationServer
from fedmoe.methods.base import RunSpec, federated_output
from fedmoe.methods.perfedavg import PerFedAvg, PerFedAvgOptions
from fedmoe.methods.personal import personal_model
from fedmoe.models import Model, build_network, unstack

SIZES = [13, 10, 17]
VAL = 6
BATCH = 3
LR = 0.05  # federated.lr: Per-FedAvg's alpha by default
ROUNDS = 3
EPOCHS = 2


def _problem() -> tuple[RunSpec, Clients]:
    """Three clients of unequal sizes (with 2B = 6, their last batches leave D' with
    one, two and no examples), every client in every round, float64, no dropout."""
    net = build_network("mlp", (1, 8, 8), 10, dropout=0.0)
    cfg = config.from_dict(
        {
            "dtype": "float64",
            "federated": {
                "rounds": ROUNDS,
                "clients_per_round": len(SIZES),
                "local_epochs": EPOCHS,
                "batch_size": BATCH,
                "lr": LR,
                "early_stopping": False,
            },
        }
    )
    run = run_spec(cfg, net, net.as_gate(1), (1, 8, 8), 10, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    total = sum(SIZES) + VAL * len(SIZES)
    x = torch.randn(total, 1, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (total,), generator=gen)
    starts = np.cumsum([0, *SIZES])
    train = [np.arange(starts[i], starts[i + 1]) for i in range(len(SIZES))]
    val = [sum(SIZES) + VAL * i + np.arange(VAL) for i in range(len(SIZES))]
    k = len(SIZES)
    clients = Clients(
        torch.arange(k),
        ClientData.from_indices(x, y, train),
        ClientData.from_indices(x, y, val),
        torch.zeros(k, dtype=torch.bool),
    )
    return run, clients


def _rows(data: ClientData, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = data.index[i, : int(data.n[i])]
    return data.x[rows], data.y[rows]


def _load(net: Model, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    module = net.module().double()
    module.load_state_dict(state)
    return module


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
    module = _load(net, state)
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
            x, y = _rows(clients.train, i)
            n = len(y)
            module = _load(net, server)
            for epoch in range(EPOCHS):
                order = batch_order(keys[i : i + 1], epoch, torch.tensor([n]), n)[0]
                for s in range(math.ceil(n / (2 * BATCH))):
                    idx = order[s * 2 * BATCH : (s + 1) * 2 * BATCH]
                    d, d2 = idx[:BATCH], idx[BATCH:]
                    if len(d2) == 0:
                        continue  # no D': no meta-gradient
                    temp = _load(net, module.state_dict())
                    _sgd_step(temp, x[d], y[d], alpha, temp)
                    _sgd_step(module, x[d2], y[d2], beta, temp)
            updates.append(module.state_dict())
        total = sum(SIZES)
        server = {
            n: sum(u[n] * (m / total) for u, m in zip(updates, SIZES, strict=True)) for n in server
        }
        loss = 0.0
        for i in range(len(SIZES)):
            adapted = _adapt(net, server, *_rows(clients.train, i), alpha)
            vx, vy = _rows(clients.val, i)
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
        expected = _adapt(run.net, best, *_rows(clients.train, i), step).state_dict()
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
    saved: list[dict[str, Any]] = []

    def keep(server: FederationServer, progress: dict[str, Any]) -> None:
        if server.next_round == 1:
            saved.append(progress)

    federate(run, method.federated, options, clients, "rounds", None, keep)
    resumed, _ = federate(run, method.federated, options, clients, "rounds", saved[0])
    assert resumed.summary() == whole.summary()
    for name, p in whole.params.items():
        assert torch.equal(resumed.params[name], p)
        assert torch.equal(resumed.best_params[name], whole.best_params[name])


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
    with pytest.raises(ConfigError, match=match) as err:
        config.from_dict({"methods": ["per-fedavg"], "method": {"per-fedavg": section}})
    assert "\n" not in str(err.value)


FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

SMALL: dict[str, Any] = {
    "model": "mlp",
    "dtype": "float64",
    "methods": ["per-fedavg"],
    "partition": {"clients": 4, "train": 20, "val": 20, "test": 20, "opt_out": 0.25},
    "federated": {"rounds": 2, "clients_per_round": 2, "local_epochs": 1, "lr": 1e-2},
    "method": {"per-fedavg": {"beta": 1e-2}},
}


@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")
def test_the_flower_app_runs_it_as_the_simulator_and_opt_out_nodes_send_nothing() -> None:
    pytest.importorskip("flwr")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flower"))
    from fakegrid import FakeGrid

    from fedmoe.flower.config import FlowerOptions, run_config
    from fedmoe.flower.server_app import run_federation

    options = FlowerOptions(
        round_timeout=1.0, personalise_timeout=1.0, join_timeout=1.0, poll_interval=0.01
    )
    cfg = config.from_dict(SMALL)
    grid = FakeGrid(run_config(cfg, options))
    try:
        for i in range(cfg.partition.clients):
            grid.add_node({"partition-id": i, "num-partitions": cfg.partition.clients})
        flower = run_federation(grid, cfg, options)
    finally:
        grid.close()
    embedded = run_experiment(cfg)
    # Accuracies, the federation's history (validation of the adapted models), epochs.
    assert flower["methods"]["per-fedavg"] == embedded["methods"]["per-fedavg"]
    opted_out = {c for c, o in enumerate(embedded["partition"]["opt_out"]) if o}
    assert len(opted_out) == 1
    rows = [r for r in flower["flower"]["audit"] if r["client"] in opted_out]
    assert rows and all(r["arrays"] == 0 and r["array_bytes"] == 0 for r in rows)
    history = embedded["methods"]["per-fedavg"]["federation"]["history"]
    assert all(not set(r["clients"]) & opted_out for r in history)
