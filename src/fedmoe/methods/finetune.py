"""FT: the final global model fine-tuned on each client's data, early stopped on its
validation set (the paper's strongest baseline)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedmoe.engine import ClientData
from fedmoe.federation import Clients
from fedmoe.methods.base import Evaluated, Method, Output, RunSpec, global_model
from fedmoe.methods.fedavg import FedAvg
from fedmoe.methods.params import broadcast
from fedmoe.methods.personal import evaluate_personal, train_personal


class FineTune(Method):
    name = "finetune"
    label = "FT"
    description = "the global model fine-tuned on each client's data"
    needs = (FedAvg.name,)

    def personalise(
        self,
        run: RunSpec,
        options: Any,
        clients: Clients,
        inputs: Mapping[str, Output],
        federated: Output | None,
    ) -> Output:
        start = broadcast(global_model(inputs[FedAvg.name]), len(clients.ids))
        return train_personal(run, clients, start, "finetune/train", "FT epochs")

    def evaluate(
        self,
        run: RunSpec,
        options: Any,
        own: Output,
        inputs: Mapping[str, Output],
        data: ClientData,
    ) -> Evaluated:
        return evaluate_personal(run, own, data)
