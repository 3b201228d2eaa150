"""Methods, each small and declarative over the engine: what is trained, what is frozen,
the objective, the initialisation, and (for FedAvg) the server's aggregation."""

from fedmoe.methods.fedavg import FedAvgConfig, FedAvgResult, FedAvgServer, aggregate, federate
from fedmoe.methods.mixture import Mixture, MixtureConfig, Pool
from fedmoe.methods.personalise import PersonalisationResult, finetune, local, moe

__all__ = [
    "FedAvgConfig",
    "FedAvgResult",
    "FedAvgServer",
    "Mixture",
    "MixtureConfig",
    "PersonalisationResult",
    "Pool",
    "aggregate",
    "federate",
    "finetune",
    "local",
    "moe",
]
