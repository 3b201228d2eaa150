"""Helpers for methods whose output is one trained model per client (or one model every
client shares)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from fedmoe.engine import Classifier, ClientData, TrainResult, evaluate, train
from fedmoe.federation import Clients
from fedmoe.methods.base import Evaluated, Output, RunSpec, global_model
from fedmoe.methods.params import prefixed, unprefixed
from fedmoe.models import Params

#: The prefix of a client's model in a personal method's output.
MODEL = "model"


def personal_output(result: TrainResult) -> Output:
    """The output of a stage that trained one model per client."""
    return Output(prefixed(result.params, MODEL), result.epochs, result.best_loss)


def personal_model(output: Output) -> Params:
    """Each client's model (stacked) in a :func:`personal_output`."""
    return unprefixed(output.state, MODEL)


def evaluate_personal(run: RunSpec, output: Output, data: ClientData) -> Evaluated:
    """Each client's own model on its rows of ``data``."""
    return Evaluated(evaluate(Classifier(run.net), personal_model(output), data).accuracy)


def train_personal(
    run: RunSpec, clients: Clients, start: Params, phase: str, description: str
) -> Output:
    """Train each client's classifier from ``start`` (stacked) with the shared
    personalisation settings, early stopped on its validation set; ``phase`` names the
    clients' random streams."""
    keys = clients.keys(run.seed, phase)
    progress = run.progress(description, run.personalise.epochs)
    res = train(
        Classifier(run.net), start, clients.train, run.personalise, keys, clients.val, progress
    )
    return personal_output(res)


def evaluate_shared(run: RunSpec, output: Output, data: ClientData) -> Evaluated:
    """The one model every client shares (``global.*`` of ``output``) on ``data``."""
    return Evaluated(evaluate(Classifier(run.net), global_model(output), data).accuracy)


def train_unfederated(
    rounds: torch.Tensor,
    clients: Clients,
    personal: Params,
    fit: Callable[[Clients, torch.Tensor], TrainResult],
) -> TrainResult:
    """Each client's personal part after federation: as it was for the clients that
    trained it in some round (``rounds > 0``: 0 epochs, NaN loss), and trained now by
    ``fit`` for the clients that never did (opt-out clients and those never sampled).

    ``fit`` gets those clients and their rows in ``clients`` (on ``rounds``' device) and
    returns their trained personal parts keyed like ``personal`` (stacked over them);
    ``personal`` (stacked over all clients) is not modified."""
    k, device = len(clients.ids), rounds.device
    out = {n: p.clone() for n, p in personal.items()}
    epochs = torch.zeros(k, dtype=torch.int64, device=device)
    best_loss = torch.full((k,), math.nan, dtype=torch.float64, device=device)
    untrained = torch.nonzero(rounds.cpu() == 0).squeeze(1)
    if untrained.numel() > 0:
        where = untrained.to(device)
        res = fit(clients.select(untrained), where)
        for n, p in res.params.items():
            out[n][where] = p
        epochs[where] = res.epochs.to(device)
        best_loss[where] = res.best_loss.to(device)
    return TrainResult(out, epochs, best_loss)
