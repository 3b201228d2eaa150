"""The federated round policy shared by the embedded simulator and the Flower ServerApp:
seeded sampling of opt-in clients, aggregation, validation early stopping with the best
model kept as a copy, and the cohort types the methods' federated hooks exchange."""

from fedmoe.federation.aggregate import num_models, weighted_mean
from fedmoe.federation.cohort import Clients, State, Update
from fedmoe.federation.server import (
    FederationConfig,
    FederationServer,
    RoundRecord,
    mean_validation,
)

__all__ = [
    "Clients",
    "FederationConfig",
    "FederationServer",
    "RoundRecord",
    "State",
    "Update",
    "mean_validation",
    "num_models",
    "weighted_mean",
]
