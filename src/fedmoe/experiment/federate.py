"""A method's federated phase in the embedded simulator: each round's sampled clients
train as one cohort through the method's hooks; the server model is validated on every
opt-in client's validation set on check rounds. Resumable from the server's state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fedmoe.federation import Clients, FederationServer, State, mean_validation
from fedmoe.methods.base import Federated, RunSpec


def federate(
    run: RunSpec,
    hooks: Federated,
    options: Any,
    clients: Clients,
    description: str,
    state: dict[str, Any] | None = None,
    on_round: Callable[[FederationServer, dict[str, Any]], None] | None = None,
) -> tuple[FederationServer, State]:
    """Run the federated phase of ``hooks`` over the opt-in ``clients`` (all clients,
    in id order). ``state`` (what ``on_round`` last saw: the server's state dict, the
    clients' state and their state at the best round) resumes a run; every round's
    random draws depend only on (seed, round, client), so a resumed run equals an
    uninterrupted one. Returns the server and the clients' state at the best round
    (rows in ``clients`` order), which goes with the server's best model(s)."""
    opt_in = np.flatnonzero(~clients.opt_out.numpy())
    device = clients.device
    server = FederationServer(hooks.init(run, options, device), opt_in, run.federation, run.seed)
    client_state = hooks.init_client_state(run, options, clients)
    best_state = _copy(client_state)
    if state is not None:
        server.load_state_dict(state["server"])
        client_state, best_state = state["clients"], state["best_clients"]
    opt_in_rows = torch.as_tensor(opt_in)
    voters = clients.select(opt_in_rows)
    progress = run.progress(description, run.federation.rounds)
    while not server.finished:
        round_ = server.next_round
        sampled = server.sample(round_)
        rows = torch.as_tensor(sampled)
        cohort = clients.select(rows)
        mine = {k: v[rows.to(v.device)] for k, v in client_state.items()}
        update = hooks.client_update(run, options, server.params, cohort, round_, mine)
        for k, v in update.state.items():
            client_state[k][rows.to(v.device)] = v
        server.params = hooks.aggregate(server.params, update, cohort.train.n)
        choice = None if update.choice is None else update.choice.tolist()
        if server.validates(round_):
            checked = {k: v[opt_in_rows.to(v.device)] for k, v in client_state.items()}
            ev = hooks.validate(run, options, server.params, voters, checked)
            loss, acc = mean_validation(ev)
            server.record(round_, sampled.tolist(), loss, acc, choice)
            if server.best_round == round_:
                best_state = _copy(client_state)
        else:
            server.record(round_, sampled.tolist(), clusters=choice)
        progress(round_ + 1, len(sampled))
        if on_round is not None:
            saved = {"server": server.state_dict(), "clients": client_state}
            on_round(server, saved | {"best_clients": best_state})
    return server, best_state


def _copy(state: State) -> State:
    return {k: v.clone() for k, v in state.items()}
