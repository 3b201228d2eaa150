"""APFL: its rounds and its opt-out personalisation equal a plain per-client loop written
from the paper's Algorithm 1 (parameter mixture from the values before each step, alpha
by projected gradient); the adaptive alpha matters; the clients' state carries over
rounds and a federation resumes exactly; the Flower app runs it as the simulator does,
opt-out nodes sending nothing; bad options are one-line errors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from pfl_toys import (
    Tensors,
    assert_one_line_config_error,
    assert_same_models,
    assert_same_state,
    batches,
    client_rows,
    close,
    federate_saving,
    federated_section,
    flower_parity,
    needs_fashion,
    nll,
    nll_grad,
    personalise_section,
    toy_problem,
)

from fedmoe import rng
from fedmoe.experiment.federate import federate
from fedmoe.federation import Clients, FederationServer
from fedmoe.methods.apfl import ALPHA, PERSONAL, ROUNDS, Apfl, ApflOptions
from fedmoe.methods.base import RunSpec, federated_output
from fedmoe.methods.fedavg import FedAvg
from fedmoe.methods.params import unprefixed
from fedmoe.models import Network, unstack

SIZES = [13, 10, 17]
VAL = 6
BATCH = 5
LR = 0.05
ROUNDS_RUN = 3
EPOCHS = 2
P_LR, P_EPOCHS, P_BATCH, PATIENCE = 0.1, 15, 4, 2


def _problem(opt_out: list[bool] | None = None, optimizer: str = "sgd") -> tuple[RunSpec, Clients]:
    """Three clients of unequal sizes (short last batches), every opt-in client in every
    round, SGD (the paper's steps) by default, float64, no dropout."""
    federated = federated_section(ROUNDS_RUN, len(SIZES), EPOCHS, BATCH, LR, optimizer=optimizer)
    personalise = personalise_section(P_EPOCHS, P_BATCH, PATIENCE, optimizer="sgd", lr=P_LR)
    # Learnable labels (3 classes by a fixed linear rule): validation improves.
    settings = {"federated": federated, "personalise": personalise}
    return toy_problem(SIZES, VAL, settings, opt_out, teacher=(64, 3))


def _mix(a: torch.Tensor, v: Tensors, w: Tensors) -> Tensors:
    return {n: a * v[n] + (1 - a) * w[n] for n in v}


def _directions(
    net: Network, w: Tensors, v: Tensors, a: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> tuple[Tensors, Tensors, torch.Tensor]:
    """Algorithm 1's gradients on a batch, all at the values before the step: of f at
    ``w``; of f at the mixture of parameters vbar = a v + (1 - a) w in ``v``
    (a grad f(vbar)); and in alpha, <v - w, grad f(vbar)>."""
    g_bar = nll_grad(net, _mix(a, v, w), x, y)
    g_alpha = sum(((v[n] - w[n]) * g_bar[n]).sum() for n in v)
    assert isinstance(g_alpha, torch.Tensor)
    return nll_grad(net, w, x, y), {n: a * g for n, g in g_bar.items()}, g_alpha


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
            x, y = client_rows(clients.train, i)
            n = len(y)
            w = {m: p.clone() for m, p in server.items()}
            v = {m: p.clone() for m, p in state[i][0].items()}
            a = state[i][1]
            opt = torch.optim.Adam([*w.values(), *v.values()], lr=LR) if adam else None
            for epoch in range(EPOCHS):
                for idx in batches(keys[i], epoch, n, BATCH):
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
                nll(net, _mix(a, v, server), *client_rows(clients.val, i))
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
    x, y = client_rows(clients.train, i)
    vx, vy = client_rows(clients.val, i)
    n = len(y)
    key = rng.client_keys(run.seed, clients.ids[i : i + 1], "apfl/personalise")
    v, a = dict(w), torch.tensor(options.alpha, dtype=torch.float64)
    best, best_loss, wait = (v, a), nll(net, _mix(a, v, w), vx, vy), 0
    for epoch in range(P_EPOCHS):
        for idx in batches(key, epoch, n, P_BATCH):
            _, g_v, g_alpha = _directions(net, w, v, a, x[idx], y[idx])
            v = _sgd(v, g_v, P_LR)
            a = _alpha_step(a, g_alpha, options.alpha_lr or P_LR, options.adaptive)

        loss = nll(net, _mix(a, v, w), vx, vy)
        if loss < best_loss:
            best, best_loss, wait = (v, a), loss, 0
        else:
            wait += 1
            if wait >= PATIENCE:
                break
    return best


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
        close(server.params[name][0], p)
    assert [r.val_loss for r in server.history] == pytest.approx(losses, abs=1e-9)
    # The best round's clients' v and alpha are kept (v is never replaced by the mix).
    assert state[ROUNDS].tolist() == [server.best_round + 1] * len(SIZES)
    for i, (mine, (v, a)) in enumerate(
        zip(unstack(unprefixed(state, PERSONAL)), best, strict=True)
    ):
        close(state[ALPHA][i], a)
        for name, p in v.items():
            close(mine[name], p)
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
        close(server.params[name], p)


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
    close(own.state[ALPHA][1], a)
    for name, p in v.items():
        close(own.state[f"{PERSONAL}.{name}"][1], p)
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
    whole, whole_state, saved = federate_saving(run, hooks, options, clients)
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
    assert_same_models(whole, resumed)
    assert_same_state(whole_state, resumed_state)


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
    assert_one_line_config_error({"methods": ["apfl"], "method": {"apfl": section}}, match)


SMALL: dict[str, Any] = {
    "model": "mlp",
    "dtype": "float64",
    "methods": ["apfl"],
    "partition": {"clients": 4, "train": 20, "val": 20, "test": 20, "opt_out": 0.25},
    "federated": {"rounds": 2, "clients_per_round": 2, "local_epochs": 1, "lr": 1e-2},
    "personalise": {"epochs": 2, "lr": 1e-2, "stopping": {"check_every": 1, "patience": 1}},
    "method": {"apfl": {"alpha_lr": 0.1}},
}


@needs_fashion
def test_the_flower_app_runs_it_as_the_simulator_and_opt_out_nodes_send_nothing() -> None:
    parity = flower_parity(SMALL)
    entry = parity.embedded["methods"]["apfl"]
    assert parity.flower["methods"]["apfl"] == entry
    opted_out = parity.opted_out
    assert len(opted_out) == 1
    parity.assert_opt_out_nodes_send_nothing()
    history = entry["federation"]["history"]
    assert all(not set(r["clients"]) & opted_out for r in history)
    # The opt-out client learned its own alpha after federation.
    (c,) = opted_out
    assert c in entry["details"]["personalised_after_federation"]
    assert entry["details"]["alpha"][c] != 0.5
