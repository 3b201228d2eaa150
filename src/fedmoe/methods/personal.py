"""Helpers for methods whose output is one trained model per client."""

from __future__ import annotations

from fedmoe.engine import Classifier, ClientData, TrainResult, evaluate
from fedmoe.methods.base import Evaluated, Output, RunSpec
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
