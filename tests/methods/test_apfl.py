"""APFL: its rounds and its opt-out personalisation equal a plain per-client loop written
from the paper's Algorithm 1 (parameter mixture from the values before each step, alpha
by projected gradient); the adaptive alpha matters; the clients' state carries over
rounds and a federation resumes exactly; the Flower app runs it as the simulator does,
opt-out nodes sending nothing; bad options are one-line errors."""

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
from fedmoe.methods.apfl import ALPHA, PERSONAL, ROUNDS, Apfl, ApflOptions
from fedmoe.methods.base import RunSpec, federated_output
from fedmoe.methods.fedavg import FedAvg
from fedmoe.methods.params import unprefixed
from fedmoe.models import Network, build_network, unstack

SIZES = [13, 10, 17]
VAL = 6
BATCH = 5
LR = 0.05
ROUNDS_RUN = 3
EPOCHS = 2
P_LR, P_EPOCHS, P_BATCH, PATIENCE = 0.1, 15, 4, 2

Tensors = dict[str, torch.Tensor]


def _problem(opt_out: list[bool] | None = None, optimizer: str = "sgd") -> tuple[RunSpec, Clients]:
    """Three clients of unequal sizes (short last batches), every opt-in client in every
    round, SGD (the paper's steps) by default, float64, no dropout."""
    net = build_network("mlp", (1, 8, 8), 10, dropout=0.0)
    cfg = config.from_dict(
        {
            "dtype": "float64",
            "federated": {
                "rounds": ROUNDS_RUN,
                "clients_per_round": len(SIZES),
                "local_epochs": EPOCHS,
                "batch_size": BATCH,
                "optimizer": optimizer,
                "lr": LR,
                "early_stopping": False,
            },
            "personalise": {
                "epochs": P_EPOCHS,
                "batch_size": P_BATCH,
                "optimizer": "sgd",
                "lr": P_LR,
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


def _mix(a: torch.Tensor, v: Tensors, w: Tensors) -> Tensors:
    return {n: a * v[n] + (1 - a) * w[n] for n in v}


def _directions(
    net: Network, w: Tensors, v: Tensors, a: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> tuple[Tensors, Tensors, torch.Tensor]:
    """Algorithm 1's gradients on a batch, all at the values before the step: of f at
    ``w``; of f at the mixture of parameters vbar = a v + (1 - a) w in ``v``
    (a grad f(vbar)); and in alpha, <v - w, grad f(vbar)>."""
    g_bar = _grad(net, _mix(a, v, w), x, y)
    g_alpha = sum(((v[n] - w[n]) * g_bar[n]).sum() for n in v)
    assert isinstance(g_alpha, torch.Tensor)
    return _grad(net, w, x, y), {n: a * g for n, g in g_bar.items()}, g_alpha


def _sgd(params: Tensors, grads: Tensors, lr: float) -> Tensors:
    return {n: p - lr * grads[n] for n, p in params.items()}


def _alpha_step(a: torch.Tensor, g: torch.Tensor, lr: float, adaptive: bool) -> torch.Tensor:
    """alpha's projected gradient step (none when not adaptive)."""
    return (a - lr * g).clamp(0.0, 1.0) if adaptive else a


def _paper(
    run: RunSpec, clients: Clients, options: ApflOptions, adam: bool = False
) -> tuple[Tensors, list[float], list[tuple[Tensors, torch.Tensor]]]:
    """APFL from the paper, one plain model per client: w and v by SGD (or, ``adam``, a
    fresh torch.optim.Adam over both per client and round), alpha by projected SGD.
    Returns the last server model, each round's validation loss (of the mixtures) and
    the best round's (v, alpha) per client."""
    net = run.net
    assert isinstance(net, Network)
    init = net.init(run.seed, torch.tensor([0]), "global/init", torch.float64)
    server = {n: p[0] for n, p in init.items()}
    k = len(SIZES)
    state = [(dict(server), torch.tensor(options.alpha, dtype=torch.float64))] * k
    alpha_lr = options.alpha_lr or LR
    losses, best, best_loss = [], state, math.inf
    for round_ in range(ROUNDS_RUN):
        keys = rng.client_keys(run.seed, clients.ids, f"fedavg/round/{round_}")
        updates, new_state = [], []
        for i in range(k):
            x, y = _rows(clients.train, i)
            n = len(y)
            w = {m: p.clone() for m, p in server.items()}
            v = {m: p.clone() for m, p in state[i][0].items()}
            a = state[i][1]
            opt = torch.optim.Adam([*w.values(), *v.values()], lr=LR) if adam else None
            for epoch in range(EPOCHS):
                order = batch_order(keys[i : i + 1], epoch, torch.tensor([n]), n)[0]
                for s in range(math.ceil(n / BATCH)):
                    idx = order[s * BATCH : (s + 1) * BATCH]
                    g_w, g_v, g_alpha = _directions(net, w, v, a, x[idx], y[idx])
                    if opt is None:
                        w, v = _sgd(w, g_w, LR), _sgd(v, g_v, LR)
                    else:
                        for t, g in zip(
                            [*w.values(), *v.values()], [*g_w.values(), *g_v.values()], strict=True
                        ):
                            t.grad = g
                        opt.step()
                    a = _alpha_step(a, g_alpha, alpha_lr, options.adaptive)
            updates.append({m: p.detach().clone() for m, p in w.items()})
            new_state.append(({m: p.detach().clone() for m, p in v.items()}, a))
        state = new_state
        server = {
            n: sum(u[n] * (m / sum(SIZES)) for u, m in zip(updates, SIZES, strict=True))
            for n in server
        }
        loss = (
            sum(
                _loss(net, _mix(a, v, server), *_rows(clients.val, i))
                for i, (v, a) in enumerate(state)
            )
            / k
        )
        losses.append(loss)
        if loss < best_loss:
            best, best_loss = state, loss
    return server, losses, best


def _personal_paper(
    run: RunSpec, clients: Clients, i: int, w: Tensors, options: ApflOptions
) -> tuple[Tensors, torch.Tensor]:
    """An opt-out client's (v, alpha): APFL's steps of v and alpha with w frozen, from
    v = w, with the personalisation settings, early stopped on the mixture's validation
    loss (the best check kept)."""
    net = run.net
    assert isinstance(net, Network)
    x, y = _rows(clients.train, i)
    vx, vy = _rows(clients.val, i)
    n = len(y)
    key = rng.client_keys(run.seed, clients.ids[i : i + 1], "apfl/personalise")
    v, a = dict(w), torch.tensor(options.alpha, dtype=torch.float64)
    best, best_loss, wait = (v, a), _loss(net, _mix(a, v, w), vx, vy), 0
    for epoch in range(P_EPOCHS):
        order = batch_order(key, epoch, torch.tensor([n]), n)[0]
        for s in range(math.ceil(n / P_BATCH)):
            idx = order[s * P_BATCH : (s + 1) * P_BATCH]
            _, g_v, g_alpha = _directions(net, w, v, a, x[idx], y[idx])
            v = _sgd(v, g_v, P_LR)
            a = _alpha_step(a, g_alpha, options.alpha_lr or P_LR, options.adaptive)

        loss = _loss(net, _mix(a, v, w), vx, vy)
        if loss < best_loss:
            best, best_loss, wait = (v, a), loss, 0
        else:
            wait += 1
            if wait >= PATIENCE:
                break
    return best


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("options", "optimizer"),
    [
        (ApflOptions(), "sgd"),
        (ApflOptions(alpha=0.3, alpha_lr=2.0), "sgd"),
        (ApflOptions(alpha=0.7, adaptive=False), "sgd"),
        (ApflOptions(alpha_lr=0.01), "adam"),
    ],
    ids=["defaults", "fast-alpha", "fixed-alpha", "adam"],
)
def test_rounds_equal_the_papers_algorithm(options: ApflOptions, optimizer: str) -> None:
    run, clients = _problem(optimizer=optimizer)
    method = Apfl()
    assert method.federated is not None
    server, state = federate(run, method.federated, options, clients, "rounds")
    last, losses, best = _paper(run, clients, options, adam=optimizer == "adam")
    for name, p in last.items():
        _close(server.params[name][0], p)
    assert [r.val_loss for r in server.history] == pytest.approx(losses, abs=1e-9)
    # The best round's clients' v and alpha are kept (v is never replaced by the mix).
    assert state[ROUNDS].tolist() == [server.best_round + 1] * len(SIZES)
    for i, (mine, (v, a)) in enumerate(
        zip(unstack(unprefixed(state, PERSONAL)), best, strict=True)
    ):
        _close(state[ALPHA][i], a)
        for name, p in v.items():
            _close(mine[name], p)
    if options.adaptive:
        assert (state[ALPHA] != options.alpha).all()
    else:
        assert (state[ALPHA] == options.alpha).all()


def test_the_global_model_is_fedavgs() -> None:
    run, clients = _problem(optimizer="adam")
    apfl, fedavg = Apfl().federated, FedAvg().federated
    assert apfl is not None and fedavg is not None
    options = ApflOptions(alpha_lr=0.01)
    server, _ = federate(run, apfl, options, clients, "rounds")
    reference, _ = federate(run, fedavg, None, clients, "rounds")
    for name, p in reference.params.items():
        _close(server.params[name], p)


def test_opt_out_clients_train_v_and_alpha_against_the_final_global_model() -> None:
    run, clients = _problem(opt_out=[False, True, False])
    method, options = Apfl(), ApflOptions(alpha=0.4, alpha_lr=0.5)
    assert method.federated is not None
    server, state = federate(run, method.federated, options, clients, "rounds")
    assert state[ROUNDS].tolist() == [server.best_round + 1, 0, server.best_round + 1]
    output = federated_output(server.best_params, server.summary(), state)
    own = method.personalise(run, options, clients, {}, output)
    w = {n: p[0] for n, p in server.best_params.items()}
    v, a = _personal_paper(run, clients, 1, w, options)
    _close(own.state[ALPHA][1], a)
    for name, p in v.items():
        _close(own.state[f"{PERSONAL}.{name}"][1], p)
    # It stopped early (the best check kept); the opt-in clients keep what federation
    # left them.
    assert own.epochs is not None and own.epochs.tolist()[0] == 0
    assert 0 < own.epochs.tolist()[1] < P_EPOCHS
    for name, p in unprefixed(state, PERSONAL).items():
        assert torch.equal(own.state[f"{PERSONAL}.{name}"][[0, 2]], p[[0, 2]])
    # What it predicts with: the mixture, on each client's own data.
    ev = method.evaluate(run, options, own, {}, clients.val)
    assert ev.accuracy.shape == (3,) and torch.equal(ev.scalars[ALPHA], own.state[ALPHA])


def test_the_adaptive_alpha_and_its_start_matter() -> None:
    run, clients = _problem()
    method = Apfl()
    assert method.federated is not None

    def trained(options: ApflOptions) -> tuple[list[float], dict[str, torch.Tensor]]:
        server, state = federate(run, method.federated, options, clients, "rounds")  # type: ignore[arg-type]
        return [r.val_loss or 0.0 for r in server.history], state

    losses, adaptive = trained(ApflOptions())
    for other in (ApflOptions(adaptive=False), ApflOptions(alpha=0.6)):
        other_losses, state = trained(other)
        assert max(abs(a - b) for a, b in zip(losses, other_losses, strict=True)) > 1e-4
        assert max(float((adaptive[n] - state[n]).abs().max()) for n in adaptive) > 1e-4


def test_state_carries_over_rounds_and_the_federation_resumes_exactly() -> None:
    run, clients = _problem()
    method, options = Apfl(), ApflOptions()
    hooks = method.federated
    assert hooks is not None
    saved: list[dict[str, Any]] = []

    def keep(server: FederationServer, progress: dict[str, Any]) -> None:
        saved.append(copy.deepcopy(progress))  # federate goes on updating its tensors

    whole, whole_state = federate(run, hooks, options, clients, "rounds", None, keep)
    # Round 2 from round 1's state differs from round 2 from a fresh state.
    server_1 = FederationServer(
        hooks.init(run, options, clients.device), np.arange(3), run.federation, 0
    )
    server_1.load_state_dict(saved[0]["server"])
    carried = hooks.client_update(run, options, server_1.params, clients, 1, saved[0]["clients"])
    fresh = hooks.client_update(
        run, options, server_1.params, clients, 1, hooks.init_client_state(run, options, clients)
    )
    for name in carried.state:
        if name != ROUNDS:
            assert not torch.equal(carried.state[name], fresh.state[name]), name
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
        ({"alpha": 1.5}, r"method\.apfl\.alpha must be in \[0, 1\], got 1\.5"),
        ({"alpha": -0.1}, r"method\.apfl\.alpha must be in \[0, 1\]"),
        ({"alpha_lr": -1.0}, r"method\.apfl\.alpha_lr must be a finite number >= 0"),
        ({"adaptive": "yes"}, r"method\.apfl\.adaptive must be of type bool"),
        ({"mu": 1.0}, r"unknown key 'method\.apfl\.mu'"),
    ],
)
def test_bad_options_are_one_line_errors(section: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        config.from_dict({"methods": ["apfl"], "method": {"apfl": section}})
    assert "\n" not in str(err.value)


FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

SMALL: dict[str, Any] = {
    "model": "mlp",
    "dtype": "float64",
    "methods": ["apfl"],
    "partition": {"clients": 4, "train": 20, "val": 20, "test": 20, "opt_out": 0.25},
    "federated": {"rounds": 2, "clients_per_round": 2, "local_epochs": 1, "lr": 1e-2},
    "personalise": {"epochs": 2, "lr": 1e-2, "stopping": {"check_every": 1, "patience": 1}},
    "method": {"apfl": {"alpha_lr": 0.1}},
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
    entry = embedded["methods"]["apfl"]
    assert flower["methods"]["apfl"] == entry
    opted_out = {c for c, o in enumerate(embedded["partition"]["opt_out"]) if o}
    assert len(opted_out) == 1
    rows = [r for r in flower["flower"]["audit"] if r["client"] in opted_out]
    assert rows and all(r["arrays"] == 0 and r["array_bytes"] == 0 for r in rows)
    history = entry["federation"]["history"]
    assert all(not set(r["clients"]) & opted_out for r in history)
    # The opt-out client learned its own alpha after federation.
    (c,) = opted_out
    assert c in entry["details"]["personalised_after_federation"]
    assert entry["details"]["alpha"][c] != 0.5
