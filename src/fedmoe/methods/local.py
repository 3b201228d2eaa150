"""Local: a fresh model per client trained on its own data only (no federation), early
stopped on its validation set."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedmoe.engine import ClientData
from fedmoe.federation import Clients
from fedmoe.methods.base import Evaluated, Method, Output, RunSpec
from fedmoe.methods.personal import evaluate_personal, train_personal


class Local(Method):
    name = "local"
    label = "Local"
    description = "a model per client trained on its own data only"

    def personalise(
        self,
        run: RunSpec,
        options: Any,
        clients: Clients,
        inputs: Mapping[str, Output],
        federated: Output | None,
    ) -> Output:
        init = run.net.init(run.seed, clients.ids, "local/init", run.dtype, clients.device)
        return train_personal(run, clients, init, "local/train", "Local epochs")

    def evaluate(
        self,
        run: RunSpec,
        options: Any,
        own: Output,
        inputs: Mapping[str, Output],
        data: ClientData,
    ) -> Evaluated:
        return evaluate_personal(run, own, data)
