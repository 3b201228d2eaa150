"""Helpers for methods whose output is one trained model per client (or one model every
client shares)."""

from __future__ import annotations

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
