"""pFedMe: its rounds and its opt-out personalisation equal a plain per-client loop
written from the paper's Algorithm 1 (K inner steps on the Moreau envelope per batch,
then w_i moves towards theta; the server steps by beta); lambda, K and beta matter; the
personal models carry over rounds and a federation resumes exactly; the Flower app runs
it as the simulator does, opt-out nodes sending nothing; bad options are one-line
errors."""

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
from fedmoe.engine import ClientData, batch_order
from fedmoe.errors import ConfigError
from fedmoe.experiment import config
from fedmoe.experiment.federate import federate
from fedmoe.experiment.prepare import run_spec
from fedmoe.experiment.run import run_experiment
from fedmoe.federation import Clients, FederationServer
from fedmoe.methods.base import RunSpec, federated_output
from fedmoe.methods.params import unprefixed
from fedmoe.methods.personal import personal_model
from fedmoe.methods.pfedme import PERSONAL, ROUNDS, PFedMe, PFedMeOptions
from fedmoe.models import Network, build_network, unstack

SIZES = [13, 10, 17]
VAL = 6
BATCH = 5
LR = 0.05  # federated.lr: pFedMe's eta
ROUNDS_RUN = 3
EPOCHS = 2
P_EPOCHS, P_BATCH, PATIENCE = 15, 4, 2

Tensors = dict[str, torch.Tensor]


def _problem(opt_out: list[bool] | None = None) -> tuple[RunSpec, Clients]:
    """Three clients of unequal sizes (short last batches), every opt-in client in every
    round, float64, no dropout."""
    net = build_network("mlp", (1, 8, 8), 10, dropout=0.0)
    cfg = config.from_dict(
        {
            "dtype": "float64",
            "federated": {
                "rounds": ROUNDS_RUN,
                "clients_per_round": len(SIZES),
                "local_epochs": EPOCHS,
                "batch_size": BATCH,
                "lr": LR,
                "early_stopping": False,
            },
            "personalise": {
                "epochs": P_EPOCHS,
                "batch_size": P_BATCH,
                "stopping": {"check_every": 1, "patience": PATIENCE, "min_delta": 0.0},
            },
        }
    )
    run = run_spec(cfg, net, net.as_gate(1), (1, 8, 8), 10, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    total = sum(SIZES) + VAL * len(SIZES)
    x = torch.randn(total, 1, 8, 8, generator=gen, dtype=torch.float64)
    # Learnable labels (3 classes by a fixed linear rule): validation improves.
    rule = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    y = (x.flatten(1) @ rule).argmax(1)
    starts = np.cumsum([0, *SIZES])
    train = [np.arange(starts[i], starts[i + 1]) for i in range(len(SIZES))]
    val = [sum(SIZES) + VAL * i + np.arange(VAL) for i in range(len(SIZES))]
    k = len(SIZES)
    clients = Clients(
        torch.arange(k),
        ClientData.from_indices(x, y, train),
        ClientData.from_indices(x, y, val),
        torch.tensor(opt_out or [False] * k),
    )
    return run, clients


def _rows(data: ClientData, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = data.index[i, : int(data.n[i])]
    return data.x[rows], data.y[rows]


def _module(net: Network, params: Tensors) -> torch.nn.Module:
    module = net.module().double()
    module.load_state_dict(params)
    return module


def _grad(net: Network, params: Tensors, x: torch.Tensor, y: torch.Tensor) -> Tensors:
    """The gradient of the mean NLL of the model ``params`` on (x, y)."""
    module = _module(net, params)
    names = [n for n, _ in module.named_parameters()]
    grads = torch.autograd.grad(F.nll_loss(module(x), y), list(module.parameters()))
    return dict(zip(names, grads, strict=True))


def _loss(net: Network, params: Tensors, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.nll_loss(_module(net, params)(x), y))


def _solve(
    net: Network, theta: Tensors, w: Tensors, x: torch.Tensor, y: torch.Tensor, o: PFedMeOptions
) -> Tensors:
    """K gradient steps on f(theta; x, y) + lam/2 ||theta - w||^2 from ``theta``."""
    for _ in range(o.steps):
        g = _grad(net, theta, x, y)
        theta = {n: p - o.personal_lr * (g[n] + o.lam * (p - w[n])) for n, p in theta.items()}
    return theta


def _paper(
    run: RunSpec, clients: Clients, o: PFedMeOptions
) -> tuple[Tensors, list[float], list[Tensors]]:
    """pFedMe from the paper, one plain model per client: the last server model, each
    round's validation loss (of the personal models) and the best round's thetas."""
    net = run.net
    assert isinstance(net, Network)
    init = net.init(run.seed, torch.tensor([0]), "global/init", torch.float64)
    server = {n: p[0] for n, p in init.items()}
    k = len(SIZES)
    losses, best, best_loss = [], [server] * k, math.inf
    for round_ in range(ROUNDS_RUN):
        keys = rng.client_keys(run.seed, clients.ids, f"pfedme/round/{round_}")
        updates, thetas = [], []
        for i in range(k):
            x, y = _rows(clients.train, i)
            n = len(y)
            w, theta = dict(server), dict(server)
            for epoch in range(EPOCHS):
                order = batch_order(keys[i : i + 1], epoch, torch.tensor([n]), n)[0]
                for s in range(math.ceil(n / BATCH)):
                    idx = order[s * BATCH : (s + 1) * BATCH]
                    theta = _solve(net, theta, w, x[idx], y[idx], o)
                    w = {m: p - LR * o.lam * (p - theta[m]) for m, p in w.items()}
            updates.append(w)
            thetas.append(theta)
        mean = {
            n: sum(u[n] * (m / sum(SIZES)) for u, m in zip(updates, SIZES, strict=True))
            for n in server
        }
        server = {n: (1 - o.beta) * p + o.beta * mean[n] for n, p in server.items()}
        loss = sum(_loss(net, t, *_rows(clients.val, i)) for i, t in enumerate(thetas)) / k
        losses.append(loss)
        if loss < best_loss:
            best, best_loss = thetas, loss
    return server, losses, best


def _personal_paper(
    run: RunSpec, clients: Clients, i: int, w: Tensors, o: PFedMeOptions
) -> Tensors:
    """An opt-out client's theta(w): the inner solver over its batches with w fixed,
    from theta = w, early stopped on validation (the best check kept)."""
    net = run.net
    assert isinstance(net, Network)
    x, y = _rows(clients.train, i)
    vx, vy = _rows(clients.val, i)
    n = len(y)
    key = rng.client_keys(run.seed, clients.ids[i : i + 1], "pfedme/personalise")
    theta = dict(w)
    best, best_loss, wait = theta, _loss(net, theta, vx, vy), 0
    for epoch in range(P_EPOCHS):
        order = batch_order(key, epoch, torch.tensor([n]), n)[0]
        for s in range(math.ceil(n / P_BATCH)):
            idx = order[s * P_BATCH : (s + 1) * P_BATCH]
            theta = _solve(net, theta, w, x[idx], y[idx], o)
        loss = _loss(net, theta, vx, vy)
        if loss < best_loss:
            best, best_loss, wait = theta, loss, 0
        else:
            wait += 1
            if wait >= PATIENCE:
                break
    return best


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "options",
    [PFedMeOptions(), PFedMeOptions(lam=3.0, steps=2, personal_lr=0.05, beta=2.0)],
    ids=["defaults", "beta-2"],
)
def test_rounds_equal_the_papers_algorithm(options: PFedMeOptions) -> None:
    run, clients = _problem()
    method = PFedMe()
    assert method.federated is not None
    server, state = federate(run, method.federated, options, clients, "rounds")
    last, losses, best = _paper(run, clients, options)
    for name, p in last.items():
        _close(server.params[name][0], p)
    assert [r.val_loss for r in server.history] == pytest.approx(losses, abs=1e-9)
    # The best round's personal models are kept, one per client.
    assert state[ROUNDS].tolist() == [server.best_round + 1] * len(SIZES)
    for mine, theta in zip(unstack(unprefixed(state, PERSONAL)), best, strict=True):
        for name, p in theta.items():
            _close(mine[name], p)


def test_opt_out_clients_get_the_personal_model_of_the_final_global_model() -> None:
    run, clients = _problem(opt_out=[False, False, True])
    method, options = PFedMe(), PFedMeOptions(lam=3.0, steps=2, personal_lr=0.05)
    assert method.federated is not None
    server, state = federate(run, method.federated, options, clients, "rounds")
    assert state[ROUNDS].tolist() == [server.best_round + 1] * 2 + [0]
    output = federated_output(server.best_params, server.summary(), state)
    own = method.personalise(run, options, clients, {}, output)
    models = unstack(personal_model(own))
    w = {n: p[0] for n, p in server.best_params.items()}
    for name, p in _personal_paper(run, clients, 2, w, options).items():
        _close(models[2][name], p)
    assert own.epochs is not None and own.epochs.tolist()[:2] == [0, 0]
    assert 0 < own.epochs.tolist()[2] < P_EPOCHS  # stopped early, the best check kept
    # The opt-in clients predict with their theta from federation.
    for i, mine in enumerate(unstack(unprefixed(state, PERSONAL))[:2]):
        for name, p in mine.items():
            assert torch.equal(models[i][name], p)
    ev = method.evaluate(run, options, own, {}, clients.val)
    assert ev.accuracy.shape == (3,) and ev.scalars[ROUNDS].tolist() == state[ROUNDS].tolist()


def test_lambda_the_inner_steps_and_beta_matter() -> None:
    run, clients = _problem()
    method = PFedMe()
    assert method.federated is not None

    def trained(options: PFedMeOptions) -> tuple[Tensors, Tensors]:
        server, state = federate(run, method.federated, options, clients, "rounds")  # type: ignore[arg-type]
        return server.params, state

    base_server, base_state = trained(PFedMeOptions())
    init = method.federated.init(run, PFedMeOptions(), clients.device)
    # The server moves (beta > 0) and the personal models are updated.
    assert max(float((base_server[n] - init[n]).abs().max()) for n in init) > 1e-3
    theta = unprefixed(base_state, PERSONAL)
    assert max(float((theta[n] - init[n]).abs().max()) for n in init) > 1e-3
    for other in (PFedMeOptions(lam=5.0), PFedMeOptions(steps=2), PFedMeOptions(beta=2.0)):
        server, state = trained(other)
        assert max(float((server[n] - base_server[n]).abs().max()) for n in server) > 1e-4
        mine = unprefixed(state, PERSONAL)
        assert max(float((mine[n] - theta[n]).abs().max()) for n in theta) > 1e-4


def test_state_carries_over_rounds_and_the_federation_resumes_exactly() -> None:
    run, clients = _problem()
    method, options = PFedMe(), PFedMeOptions()
    hooks = method.federated
    assert hooks is not None
    saved: list[dict[str, Any]] = []

    def keep(server: FederationServer, progress: dict[str, Any]) -> None:
        saved.append(copy.deepcopy(progress))  # federate goes on updating its tensors

    whole, whole_state = federate(run, hooks, options, clients, "rounds", None, keep)
    # After round 1, a client's theta is its own (not the server's) and round 2 starts
    # from the server's model again: theta persists for prediction, not for training.
    after_1 = unprefixed(saved[0]["clients"], PERSONAL)
    after_2 = unprefixed(saved[1]["clients"], PERSONAL)
    assert all(not torch.equal(after_1[n], after_2[n]) for n in after_1)
    assert saved[1]["clients"][ROUNDS].tolist() == [2, 2, 2]
    resumed, resumed_state = federate(run, hooks, options, clients, "rounds", saved[0])
    assert resumed.summary() == whole.summary()
    for name, p in whole.params.items():
        assert torch.equal(resumed.params[name], p)
        assert torch.equal(resumed.best_params[name], whole.best_params[name])
    for name, p in whole_state.items():
        assert torch.equal(resumed_state[name], p)


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"beta": 0.0}, r"method\.pfedme\.beta must be a positive number \(0 freezes the server\)"),
        ({"lam": 0.0}, r"method\.pfedme\.lam must be a positive number, got 0\.0"),
        ({"steps": 0}, r"method\.pfedme\.steps must be at least 1, got 0"),
        ({"personal_lr": -0.1}, r"method\.pfedme\.personal_lr must be a positive number"),
        ({"steps": 1.5}, r"method\.pfedme\.steps must be of type int"),
        ({"mu": 1.0}, r"unknown key 'method\.pfedme\.mu'"),
    ],
)
def test_bad_options_are_one_line_errors(section: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        config.from_dict({"methods": ["pfedme"], "method": {"pfedme": section}})
    assert "\n" not in str(err.value)


FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

SMALL: dict[str, Any] = {
    "model": "mlp",
    "dtype": "float64",
    "methods": ["pfedme"],
    "partition": {"clients": 4, "train": 20, "val": 20, "test": 20, "opt_out": 0.25},
    "federated": {"rounds": 2, "clients_per_round": 2, "local_epochs": 1, "lr": 1e-2},
    "personalise": {"epochs": 2, "stopping": {"check_every": 1, "patience": 1}},
    "method": {"pfedme": {"steps": 2, "beta": 2.0}},
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
    entry = embedded["methods"]["pfedme"]
    assert flower["methods"]["pfedme"] == entry
    opted_out = {c for c, o in enumerate(embedded["partition"]["opt_out"]) if o}
    assert len(opted_out) == 1
    rows = [r for r in flower["flower"]["audit"] if r["client"] in opted_out]
    assert rows and all(r["arrays"] == 0 and r["array_bytes"] == 0 for r in rows)
    history = entry["federation"]["history"]
    assert all(not set(r["clients"]) & opted_out for r in history)
    assert opted_out <= set(entry["details"]["personalised_after_federation"])
