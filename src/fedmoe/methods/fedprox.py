"""FedProx (T. Li, Sahu, Zaheer, Sanjabi, Talwalkar and Smith, "Federated Optimization in
Heterogeneous Networks", MLSys 2020): FedAvg whose clients minimise, in each round, their
local loss plus a proximal term towards the server model they received,

    mean NLL(w) + (mu / 2) ||w - w_received||^2,

with the shared federated settings (local epochs, batch size, optimiser). What is
shared: the whole model, aggregated as FedAvg's sample-weighted mean. What is kept on the
clients: nothing. Validation (early stopping, best round kept) and evaluation are
FedAvg's: one global model every client uses, opt-out clients included; an opt-out
client never trains or sends, and gets that global model.

Option ``mu`` (>= 0): the proximal weight. Default 0.01, the low end of the values the
paper tunes over ({0.001, 0.01, 0.1, 1}); ``mu = 0`` is FedAvg. Local training draws
its batches from FedAvg's per-client streams (``fedavg/round/<r>``), so at ``mu = 0``
FedProx trains exactly what FedAvg trains and paired comparisons share their noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedmoe.errors import ConfigError
from fedmoe.federation import Clients, State, Update
from fedmoe.methods.base import RunSpec
from fedmoe.methods.fedavg import FedAvg, FedAvgRounds
from fedmoe.methods.params import broadcast
from fedmoe.methods.proximal import train_proximal
from fedmoe.models import Params


@dataclass(frozen=True)
class FedProxOptions:
    """``mu``: the proximal term's weight (>= 0; 0 is FedAvg)."""

    mu: float = 0.01

    def validate(self, where: str) -> None:
        if not (math.isfinite(self.mu) and self.mu >= 0):
            raise ConfigError(f"{where}.mu must be a finite number >= 0, got {self.mu}")


class FedProxRounds(FedAvgRounds):
    """FedAvg's rounds with the proximal local loss (see the module docstring)."""

    def client_update(
        self,
        run: RunSpec,
        options: Any,
        server: Params,
        clients: Clients,
        round_: int,
        state: State,
    ) -> Update:
        received = broadcast(server, len(clients.ids))
        keys = clients.keys(run.seed, f"fedavg/round/{round_}")
        cfg = run.federation.local
        trained = train_proximal(run.net, options.mu, received, received, clients.train, cfg, keys)
        return Update(trained.params)


class FedProx(FedAvg):
    name = "fedprox"
    label = "FedProx"
    description = "FedAvg with a proximal term towards the received global model (FedProx)"
    options = FedProxOptions
    federated = FedProxRounds()
