"""Centralised: one model trained on every client's training data pooled and early
stopped on the pooled validation sets (every epoch): the upper bound a federation could
reach with all data in one place. It runs in the embedded simulator only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedmoe import rng
from fedmoe.engine import (
    Classifier,
    ClientData,
    EarlyStopping,
    OptimizerConfig,
    TrainConfig,
    train,
)
from fedmoe.errors import ConfigError
from fedmoe.federation import Clients
from fedmoe.methods.base import GLOBAL, Evaluated, Method, Output, RunSpec
from fedmoe.methods.params import prefixed
from fedmoe.methods.personal import evaluate_shared


@dataclass(frozen=True)
class CentralisedOptions:
    """Adam with ``lr`` for at most ``epochs`` epochs of batch ``batch_size``, stopped
    after ``patience`` epochs without a better pooled validation loss."""

    epochs: int = 100
    batch_size: int = 50
    lr: float = 1e-3
    patience: int = 5

    def validate(self, where: str) -> None:
        for key in ("epochs", "batch_size", "patience"):
            value = getattr(self, key)
            if value < 1:
                raise ConfigError(f"{where}.{key} must be at least 1, got {value}")
        if self.lr <= 0:
            raise ConfigError(f"{where}.lr must be positive, got {self.lr}")


def pooled(data: ClientData) -> ClientData:
    """Every client's examples as one client's data."""
    index = data.index.cpu().numpy()
    rows = [index[k, : int(data.n[k])] for k in range(data.num_clients)]
    return ClientData.from_indices(data.x, data.y, [np.concatenate(rows)])


class Centralised(Method):
    name = "centralised"
    label = "Centralised"
    description = "one model trained on all clients' pooled data (an upper bound)"
    options = CentralisedOptions
    shared = True

    def node_support(self, options: Any) -> str | None:
        return "it trains on every client's data in one place, which a federation never has"

    def personalise(
        self,
        run: RunSpec,
        options: Any,
        clients: Clients,
        inputs: Mapping[str, Output],
        federated: Output | None,
    ) -> Output:
        one = torch.tensor([0])
        init = run.net.init(run.seed, one, "centralised/init", run.dtype, clients.device)
        cfg = TrainConfig(
            options.epochs,
            options.batch_size,
            OptimizerConfig("adam", lr=options.lr),
            EarlyStopping(1, options.patience, 0.0),
            run.personalise.max_cohort,
        )
        keys = rng.client_keys(run.seed, one, "centralised/train").to(clients.device)
        progress = run.progress("Centralised epochs", options.epochs)
        res = train(
            Classifier(run.net),
            init,
            pooled(clients.train),
            cfg,
            keys,
            pooled(clients.val),
            progress,
        )
        return Output(prefixed(res.params, GLOBAL), res.epochs, res.best_loss)

    def evaluate(
        self,
        run: RunSpec,
        options: Any,
        own: Output,
        inputs: Mapping[str, Output],
        data: ClientData,
    ) -> Evaluated:
        return evaluate_shared(run, own, data)
