"""FedProx: its hooks train what a plain per-client loop written from the paper trains,
its proximal term matters (mu = 0 is FedAvg), a federation resumes exactly, the Flower
app gives the simulator's results with opt-out nodes sending nothing, bad options fail
in one line."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmoe import rng
from fedmoe.engine import ClientData, OptimizerConfig, batch_order
from fedmoe.errors import ConfigError
from fedmoe.experiment import config
from fedmoe.experiment.federate import federate
from fedmoe.experiment.prepare import run_spec
from fedmoe.experiment.run import run_experiment
from fedmoe.federation import Clients, FederationServer, State
from fedmoe.methods import RunSpec
from fedmoe.methods.base import Federated
from fedmoe.methods.fedavg import FedAvg
from fedmoe.methods.fedprox import FedProx, FedProxOptions
from fedmoe.models import Params, build_network

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
SHAPE = (1, 8, 8)
NET = build_network("mlp", SHAPE, 10, dropout=0.0)
SIZES = [12, 17, 9, 15]


def _problem() -> tuple[Clients, torch.Tensor, torch.Tensor, list[np.ndarray]]:
    """Four clients of unequal sizes on random (1, 8, 8) inputs; returns the clients
    and the raw examples with each client's training rows."""
    g = torch.Generator().manual_seed(0)
    total = 2 * sum(SIZES)
    x = torch.randn(total, *SHAPE, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (total,), generator=g)
    starts = np.cumsum([0, *SIZES])
    train = [np.arange(starts[i], starts[i + 1]) for i in range(len(SIZES))]
    val = [t + sum(SIZES) for t in train]
    clients = Clients(
        torch.arange(len(SIZES)),
        ClientData.from_indices(x, y, train),
        ClientData.from_indices(x, y, val),
        torch.zeros(len(SIZES), dtype=torch.bool),
    )
    return clients, x, y, train


def _run(**federated: Any) -> RunSpec:
    settings = {
        "rounds": 3,
        "clients_per_round": len(SIZES),
        "local_epochs": 2,
        "batch_size": 5,
        "optimizer": "adam",
        "lr": 1e-2,
        "weight_decay": 1e-3,
        "early_stopping": False,
    }
    cfg = config.from_dict({"dtype": "float64", "federated": settings | federated})
    gate = build_network("mlp", SHAPE, 10, gate=True, dropout=0.0)
    return run_spec(cfg, NET, gate, SHAPE, 10, torch.device("cpu"))


def _rounds(run: RunSpec, hooks: Federated, options: Any, clients: Clients) -> list[Params]:
    """The server model after each round, through the method's hooks alone."""
    server = hooks.init(run, options, clients.device)
    state: State = hooks.init_client_state(run, options, clients)
    history = []
    for r in range(run.federation.rounds):
        update = hooks.client_update(run, options, server, clients, r, state)
        server = hooks.aggregate(server, update, clients.train.n)
        state = update.state
        history.append(server)
    return history


def _optimizer(module: torch.nn.Module, o: OptimizerConfig) -> torch.optim.Optimizer:
    if o.name == "adam":
        return torch.optim.Adam(
            module.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
        )
    return torch.optim.SGD(
        module.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
    )


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
    w = {n: t.clone() for n, t in init.items()}
    history = []
    for r in range(run.federation.rounds):
        keys = rng.client_keys(run.seed, torch.arange(len(train)), f"fedavg/round/{r}")
        trained, sizes = [], []
        for k, rows in enumerate(train):
            xk, yk, n = x[rows], y[rows], len(rows)
            module = NET.module().double()
            module.load_state_dict(w)
            received = copy.deepcopy(w)
            opt = _optimizer(module, local.optimizer)
            for epoch in range(local.epochs):
                order = batch_order(keys[k : k + 1], epoch, torch.tensor([n]), n)[0]
                for s in range(math.ceil(n / local.batch_size)):
                    idx = order[s * local.batch_size : (s + 1) * local.batch_size]
                    opt.zero_grad()
                    prox = sum(
                        ((p - received[name]) ** 2).sum() for name, p in module.named_parameters()
                    )
                    loss = F.nll_loss(module(xk[idx]), yk[idx]) + mu / 2 * prox
                    loss.backward()
                    opt.step()
            trained.append({n: p.detach().clone() for n, p in module.state_dict().items()})
            sizes.append(n)
        total = sum(sizes)
        w = {
            n: torch.stack([s * t[n] for s, t in zip(sizes, trained, strict=True)]).sum(0) / total
            for n in w
        }
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
    saved: list[dict[str, Any]] = []

    def keep(server: FederationServer, progress: dict[str, Any]) -> None:
        if server.next_round == 1:
            saved.append(copy.deepcopy(progress))

    federate(run, hooks, options, clients, "rounds", None, keep)
    resumed, _ = federate(run, hooks, options, clients, "rounds", saved[0])
    assert resumed.summary() == whole.summary()
    for name, p in whole.best_params.items():
        assert torch.equal(resumed.best_params[name], p)
        assert torch.equal(resumed.params[name], whole.params[name])


SMALL: dict[str, Any] = {
    "model": "mlp",
    "dtype": "float64",
    "methods": ["fedprox"],
    "partition": {"clients": 5, "train": 20, "val": 20, "test": 20, "opt_out": 0.4},
    "federated": {"rounds": 2, "clients_per_round": 2, "local_epochs": 2, "lr": 1e-2},
    "personalise": {"epochs": 2, "lr": 1e-3, "stopping": {"check_every": 1, "patience": 1}},
    "method": {"fedprox": {"mu": 1.0}},
}


@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")
def test_fedprox_on_the_flower_app_equals_the_simulator_and_opt_out_nodes_send_nothing() -> None:
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
    threads = torch.get_num_threads()
    try:
        for i in range(cfg.partition.clients):
            grid.add_node({"partition-id": i, "num-partitions": cfg.partition.clients})
        flower = run_federation(grid, cfg, options)
    finally:
        grid.close()
        torch.set_num_threads(threads)
    embedded = run_experiment(cfg)
    assert flower["methods"]["fedprox"] == embedded["methods"]["fedprox"]
    # Every client, opt-out ones included, is scored with the one global model.
    entry = embedded["methods"]["fedprox"]
    assert entry["epochs"] is None and len(entry["local_test"]["per_client"]) == 5
    opted_out = {c for c, o in enumerate(embedded["partition"]["opt_out"]) if o}
    assert len(opted_out) == 2
    audit = [row for row in flower["flower"]["audit"] if row["client"] in opted_out]
    assert audit and all(row["arrays"] == 0 and row["array_bytes"] == 0 for row in audit)


@pytest.mark.parametrize(
    ("mu", "message"),
    [(-0.5, "method.fedprox.mu must be a finite number >= 0, got -0.5"), (math.nan, "got nan")],
)
def test_a_bad_mu_is_a_one_line_config_error(mu: float, message: str) -> None:
    data = {"methods": ["fedprox"], "method": {"fedprox": {"mu": mu}}}
    with pytest.raises(ConfigError, match=message) as err:
        config.from_dict(data)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        config.from_dict({"methods": ["fedprox"], "method": {"fedprox": {"nu": 1.0}}})
    assert "\n" not in str(err.value)
    assert FedProxOptions().mu == 0.01
