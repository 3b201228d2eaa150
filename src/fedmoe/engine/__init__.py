"""The cohort engine: many clients trained in lockstep, one vectorised step at a time."""

from fedmoe.engine.cohort import ClientData
from fedmoe.engine.evaluate import Evaluation, evaluate
from fedmoe.engine.objective import (
    AfterStep,
    Classifier,
    ClientLoss,
    Dropout,
    Objective,
    OwnOptimizers,
    OwnStep,
    client_losses,
    mean_nll,
)
from fedmoe.engine.optim import OptimizerConfig
from fedmoe.engine.train import EarlyStopping, TrainConfig, TrainResult, batch_order, train

__all__ = [
    "AfterStep",
    "Classifier",
    "ClientData",
    "ClientLoss",
    "Dropout",
    "EarlyStopping",
    "Evaluation",
    "Objective",
    "OptimizerConfig",
    "OwnOptimizers",
    "OwnStep",
    "TrainConfig",
    "TrainResult",
    "batch_order",
    "client_losses",
    "evaluate",
    "mean_nll",
    "train",
]
