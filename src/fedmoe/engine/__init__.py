"""The cohort engine: many clients trained in lockstep, one vectorised step at a time."""

from fedmoe.engine.cohort import ClientData
from fedmoe.engine.evaluate import Evaluation, evaluate
from fedmoe.engine.objective import Classifier, ClientLoss, Dropout, Objective, mean_nll
from fedmoe.engine.optim import OptimizerConfig
from fedmoe.engine.train import EarlyStopping, TrainConfig, TrainResult, batch_order, train

__all__ = [
    "Classifier",
    "ClientData",
    "ClientLoss",
    "Dropout",
    "EarlyStopping",
    "Evaluation",
    "Objective",
    "OptimizerConfig",
    "TrainConfig",
    "TrainResult",
    "batch_order",
    "evaluate",
    "mean_nll",
    "train",
]
