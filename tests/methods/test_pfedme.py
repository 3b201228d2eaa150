"""pFedMe: its rounds and its opt-out personalisation equal a plain per-client loop
written from the paper's Algorithm 1 (K inner steps on the Moreau envelope per batch,
then w_i moves towards theta; the server steps by beta); lambda, K and beta matter; the
personal models carry over rounds and a federation resumes exactly; the Flower app runs
it as the simulator does, opt-out nodes sending nothing; bad options are one-line
errors."""

from __future__ import annotations

import math
from typing import Any

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
from fedmoe.federation import Clients
from fedmoe.methods.base import RunSpec, federated_output
from fedmoe.methods.params import unprefixed
from fedmoe.methods.personal import personal_model
from fedmoe.methods.pfedme import PERSONAL, ROUNDS, PFedMe, PFedMeOptions
from fedmoe.models import Network, unstack

SIZES = [13, 10, 17]
VAL = 6
BATCH = 5
LR = 0.05  # federated.lr: pFedMe's eta
ROUNDS_RUN = 3
EPOCHS = 2
P_EPOCHS, P_BATCH, PATIENCE = 15, 4, 2


def _problem(opt_out: list[bool] | None = None) -> tuple[RunSpec, Clients]:
    """Three clients of unequal sizes (short last batches), every opt-in client in every
    round, float64, no dropout."""
    federated = federated_section(ROUNDS_RUN, len(SIZES), EPOCHS, BATCH, LR)
    personalise = personalise_section(P_EPOCHS, P_BATCH, PATIENCE)
    # Learnable labels (3 classes by a fixed linear rule): validation improves.
    settings = {"federated": federated, "personalise": personalise}
    return toy_problem(SIZES, VAL, settings, opt_out, teacher=(64, 3))


def _solve(
    net: Network, theta: Tensors, w: Tensors, x: torch.Tensor, y: torch.Tensor, o: PFedMeOptions
) -> Tensors:
    """K gradient steps on f(theta; x, y) + lam/2 ||theta - w||^2 from ``theta``."""
    for _ in range(o.steps):
        g = nll_grad(net, theta, x, y)
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
            x, y = client_rows(clients.train, i)
            n = len(y)
            w, theta = dict(server), dict(server)
            for epoch in range(EPOCHS):
                for idx in batches(keys[i], epoch, n, BATCH):
                    theta = _solve(net, theta, w, x[idx], y[idx], o)
                    w = {m: p - LR * o.lam * (p - theta[m]) for m, p in w.items()}
            updates.append(w)
            thetas.append(theta)
        mean = {
            n: sum(u[n] * (m / sum(SIZES)) for u, m in zip(updates, SIZES, strict=True))
            for n in server
        }
        server = {n: (1 - o.beta) * p + o.beta * mean[n] for n, p in server.items()}
        loss = sum(nll(net, t, *client_rows(clients.val, i)) for i, t in enumerate(thetas)) / k
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
    x, y = client_rows(clients.train, i)
    vx, vy = client_rows(clients.val, i)
    n = len(y)
    key = rng.client_keys(run.seed, clients.ids[i : i + 1], "pfedme/personalise")
    theta = dict(w)
    best, best_loss, wait = theta, nll(net, theta, vx, vy), 0
    for epoch in range(P_EPOCHS):
        for idx in batches(key, epoch, n, P_BATCH):
            theta = _solve(net, theta, w, x[idx], y[idx], o)
        loss = nll(net, theta, vx, vy)
        if loss < best_loss:
            best, best_loss, wait = theta, loss, 0
        else:
            wait += 1
            if wait >= PATIENCE:
                break
    return best


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
        close(server.params[name][0], p)
    assert [r.val_loss for r in server.history] == pytest.approx(losses, abs=1e-9)
    # The best round's personal models are kept, one per client.
    assert state[ROUNDS].tolist() == [server.best_round + 1] * len(SIZES)
    for mine, theta in zip(unstack(unprefixed(state, PERSONAL)), best, strict=True):
        for name, p in theta.items():
            close(mine[name], p)


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
        close(models[2][name], p)
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
    whole, whole_state, saved = federate_saving(run, hooks, options, clients)
    # After round 1, a client's theta is its own (not the server's) and round 2 starts
    # from the server's model again: theta persists for prediction, not for training.
    after_1 = unprefixed(saved[0]["clients"], PERSONAL)
    after_2 = unprefixed(saved[1]["clients"], PERSONAL)
    assert all(not torch.equal(after_1[n], after_2[n]) for n in after_1)
    assert saved[1]["clients"][ROUNDS].tolist() == [2, 2, 2]
    resumed, resumed_state = federate(run, hooks, options, clients, "rounds", saved[0])
    assert_same_models(whole, resumed)
    assert_same_state(whole_state, resumed_state)


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
    assert_one_line_config_error({"methods": ["pfedme"], "method": {"pfedme": section}}, match)


SMALL: dict[str, Any] = {
    "model": "mlp",
    "dtype": "float64",
    "methods": ["pfedme"],
    "partition": {"clients": 4, "train": 20, "val": 20, "test": 20, "opt_out": 0.25},
    "federated": {"rounds": 2, "clients_per_round": 2, "local_epochs": 1, "lr": 1e-2},
    "personalise": {"epochs": 2, "stopping": {"check_every": 1, "patience": 1}},
    "method": {"pfedme": {"steps": 2, "beta": 2.0}},
}


@needs_fashion
def test_the_flower_app_runs_it_as_the_simulator_and_opt_out_nodes_send_nothing() -> None:
    parity = flower_parity(SMALL)
    entry = parity.embedded["methods"]["pfedme"]
    assert parity.flower["methods"]["pfedme"] == entry
    opted_out = parity.opted_out
    assert len(opted_out) == 1
    parity.assert_opt_out_nodes_send_nothing()
    history = entry["federation"]["history"]
    assert all(not set(r["clients"]) & opted_out for r in history)
    assert opted_out <= set(entry["details"]["personalised_after_federation"])
