"""FedAvg (McMahan et al., 2017): one global model, the sample-weighted mean of the
sampled clients' locally trained models, validated on the opt-in clients' validation
sets for early stopping (the best global model is kept). Every client, opt-out ones
included, is evaluated with that model; an opt-out client never trains or sends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fedmoe.engine import Classifier, ClientData, Evaluation, evaluate, train
from fedmoe.federation import Clients, State, Update
from fedmoe.methods.base import Evaluated, Federated, Method, Output, RunSpec
from fedmoe.methods.params import broadcast
from fedmoe.methods.personal import evaluate_shared
from fedmoe.models import Params


def local_training(run: RunSpec, start: Params, clients: Clients, round_: int) -> Params:
    """Round ``round_``'s local training of ``clients`` from ``start`` (one model per
    client) with the shared federated settings."""
    keys = clients.keys(run.seed, f"fedavg/round/{round_}")
    return train(Classifier(run.net), start, clients.train, run.federation.local, keys).params


class FedAvgRounds(Federated):
    """Each sampled client trains the global model; the default aggregation."""

    def init(self, run: RunSpec, options: Any, device: torch.device) -> Params:
        return run.net.init(run.seed, torch.tensor([0]), "global/init", run.dtype, device)

    def client_update(
        self,
        run: RunSpec,
        options: Any,
        server: Params,
        clients: Clients,
        round_: int,
        state: State,
    ) -> Update:
        start = broadcast(server, len(clients.ids))
        return Update(local_training(run, start, clients, round_))

    def validate(
        self, run: RunSpec, options: Any, server: Params, clients: Clients, state: State
    ) -> Evaluation:
        del state
        return evaluate(Classifier(run.net), server, clients.val)


class FedAvg(Method):
    name = "fedavg"
    label = "FedAvg"
    description = "FedAvg's global model, the same for every client"
    federated = FedAvgRounds()
    shared = True

    def evaluate(
        self,
        run: RunSpec,
        options: Any,
        own: Output,
        inputs: Mapping[str, Output],
        data: ClientData,
    ) -> Evaluated:
        return evaluate_shared(run, own, data)
