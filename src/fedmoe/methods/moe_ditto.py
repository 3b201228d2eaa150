"""MoE (Ditto): the paper's mixture over the strongest specialist of the baselines, one
of the paper's "combinations of different kinds": per client, a specialist initialised
from its Ditto personal model (instead of its fine-tuned model), the frozen FedAvg
global model and a fresh gate, trained on the paper's mixture objective and early
stopped on the client's validation set, as ``moe`` is (:func:`fedmoe.methods.moe.
train_mixture`). Ditto's personal models are pulled towards the global model during
federation; the gate then chooses, per input, between that personal model (trained
further inside the mixture) and the global model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedmoe.engine import ClientData
from fedmoe.federation import Clients
from fedmoe.methods.base import Evaluated, Method, Output, RunSpec
from fedmoe.methods.ditto import Ditto
from fedmoe.methods.fedavg import FedAvg
from fedmoe.methods.mixture import Pool, Schedule
from fedmoe.methods.moe import MoeOptions, evaluate_mixture, mixture_of, train_mixture

#: Paired differences: against Ditto and the paper's mixture on the clients' own data
#: (where they ran), against FedAvg and Ditto on the global test set.
BASELINES: dict[str, tuple[str, ...]] = {
    "local_test": (Ditto.name, "moe"),
    "global_test": (FedAvg.name, Ditto.name),
}


@dataclass(frozen=True)
class MoeDittoOptions:
    """As ``moe``'s options (see :class:`~fedmoe.methods.moe.MoeOptions`) but the
    specialist, which is Ditto's personal model."""

    lr: float = 1e-5
    pool: Pool = "probability"
    train_specialist: bool = True
    gate_bias: float = 0.0
    schedule: Schedule = "joint"

    def validate(self, where: str) -> None:
        self.as_moe().validate(where)

    def as_moe(self) -> MoeOptions:
        return MoeOptions(self.lr, self.pool, self.train_specialist, self.gate_bias, self.schedule)


class MoeDitto(Method):
    name = "moe-ditto"
    label = "MoE (Ditto)"
    description = "the paper's mixture over Ditto's personal models and the FedAvg global model"
    options = MoeDittoOptions
    needs = (FedAvg.name, Ditto.name)
    baselines = BASELINES
    contender = True

    def personalise(
        self,
        run: RunSpec,
        options: Any,
        clients: Clients,
        inputs: Mapping[str, Output],
        federated: Output | None,
    ) -> Output:
        moe = options.as_moe()
        return train_mixture(run, moe, clients, inputs, "MoE (Ditto) epochs", Ditto.name)

    def evaluate(
        self,
        run: RunSpec,
        options: Any,
        own: Output,
        inputs: Mapping[str, Output],
        data: ClientData,
    ) -> Evaluated:
        return evaluate_mixture(mixture_of(run, options.as_moe(), inputs), own.state, data)
