"""IFCA (Ghosh et al., 2020): several global models federated with the shared
federated settings. In each round every sampled client trains the model with the
lowest loss on its training data, and each model becomes the sample-weighted mean of
the updates of the clients that chose it (a model no one chose is kept); a client's
validation score is that of its best model. Each client is then evaluated with its
model of lowest validation loss. An opt-out client trains nothing but still picks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedmoe.engine import Classifier, ClientData, Evaluation, evaluate
from fedmoe.errors import ConfigError
from fedmoe.federation import Clients, State, Update, num_models, weighted_mean
from fedmoe.methods.base import Evaluated, Federated, Method, Output, RunSpec, global_model
from fedmoe.methods.fedavg import local_training
from fedmoe.methods.params import rows
from fedmoe.models import Params

#: Each client's chosen model in the output of ``ifca``.
CHOICE = "choice"


@dataclass(frozen=True)
class IfcaOptions:
    """``models``: how many global (cluster) models."""

    models: int = 3

    def validate(self, where: str) -> None:
        if self.models < 2:
            raise ConfigError(f"{where}.models must be at least 2, got {self.models}")


@torch.no_grad()
def evaluate_each(objective: Classifier, params: Params, data: ClientData) -> Evaluation:
    """Each of ``params``'s models on every client of ``data``: loss and accuracy
    ``(models, K)``."""
    device = next(iter(params.values())).device
    evs = [
        evaluate(objective, rows(params, torch.tensor([j], device=device)), data)
        for j in range(num_models(params))
    ]
    return Evaluation(
        torch.stack([e.loss for e in evs]), torch.stack([e.accuracy for e in evs]), data.n
    )


def best_models(objective: Classifier, params: Params, data: ClientData) -> torch.Tensor:
    """Each client's model with the lowest loss on its ``data`` ``(K,)``."""
    return evaluate_each(objective, params, data).loss.argmin(0)


class IfcaRounds(Federated):
    """IFCA's hooks (see the module docstring)."""

    def init(self, run: RunSpec, options: Any, device: torch.device) -> Params:
        models = torch.arange(options.models)
        return run.net.init(run.seed, models, "clustered/init", run.dtype, device)

    def client_update(
        self,
        run: RunSpec,
        options: Any,
        server: Params,
        clients: Clients,
        round_: int,
        state: State,
    ) -> Update:
        best = best_models(Classifier(run.net), server, clients.train)
        return Update(local_training(run, rows(server, best), clients, round_), best)

    def aggregate(self, server: Params, update: Update, weights: torch.Tensor) -> Params:
        assert update.choice is not None
        choice = update.choice.cpu().numpy()
        models = []
        for j in range(num_models(server)):
            chosen = torch.as_tensor(np.flatnonzero(choice == j), device=weights.device)
            if len(chosen) == 0:
                models.append(rows(server, torch.tensor([j], device=chosen.device)))
            else:
                models.append(weighted_mean(rows(update.params, chosen), weights[chosen]))
        return {n: torch.cat([m[n] for m in models]) for n in server}

    def validate(
        self, run: RunSpec, options: Any, server: Params, clients: Clients, state: State
    ) -> Evaluation:
        del state
        every = evaluate_each(Classifier(run.net), server, clients.val)
        best = every.loss.argmin(0, keepdim=True)
        return Evaluation(
            every.loss.gather(0, best)[0], every.accuracy.gather(0, best)[0], clients.val.n
        )


class Ifca(Method):
    name = "ifca"
    label = "IFCA"
    description = "each client's best of several cluster models on validation (IFCA)"
    options = IfcaOptions
    federated = IfcaRounds()

    def personalise(
        self,
        run: RunSpec,
        options: Any,
        clients: Clients,
        inputs: Mapping[str, Output],
        federated: Output | None,
    ) -> Output:
        assert federated is not None
        chosen = best_models(Classifier(run.net), global_model(federated), clients.val)
        return Output(federated.state | {CHOICE: chosen}, info=federated.info)

    def evaluate(
        self,
        run: RunSpec,
        options: Any,
        own: Output,
        inputs: Mapping[str, Output],
        data: ClientData,
    ) -> Evaluated:
        chosen = own.state[CHOICE]
        acc = evaluate_each(Classifier(run.net), global_model(own), data).accuracy
        return Evaluated(acc.gather(0, chosen.unsqueeze(0))[0], scalars={"model": chosen})

    def details(
        self, options: Any, scalars: Mapping[str, list[float]], variant: str | None = None
    ) -> dict[str, Any]:
        chosen = [int(m) for m in scalars["model"]]
        return {
            "models": options.models,
            "clients_per_model": np.bincount(chosen, minlength=options.models).tolist(),
            "model_of_client": chosen,
        }
