"""FedBABU (Oh, Kim and Yun, "FedBABU: Toward Enhanced Representation for Federated Image
Classification", ICLR 2022).

The classifier is split into a body and a head (the last layer with parameters,
:func:`fedmoe.models.split_head`). During federation the head stays at its random
initialisation, the same for every client: the initial model's head (FedAvg's initial
model, a pure function of the seed), so each client derives it and nobody sends it. In
each round every sampled client trains the received body only, the head frozen, with
the shared federated settings (batches from the per-client streams
``fedbabu/round/<r>``), and sends the body.

What is shared: the body. The server's params are the body only, aggregated as FedAvg's
sample-weighted mean. What is kept on the clients during federation: nothing. Early
stopping scores the global body under the frozen head (one model for every client, as
FedAvg's validation).

After federation every client fine-tunes the whole model (body and head), starting from
the best round's body and the initial head, on its own data with the shared
personalisation settings (``[personalise]``), early stopped on its validation set
(streams ``fedbabu/finetune``), and predicts with that model. An opt-out client (it
never trains or sends anything) gets the same: it fine-tunes the global body and the
initial head on its data, as every client does.

Options: ``finetune_lr`` (> 0, or 0: ``personalise.lr``) and ``finetune_epochs`` (>= 1,
or 0: ``personalise.epochs``, an upper bound under early stopping), default 0 and 0: the
shared personalisation settings, so FedBABU's fine-tuning is FT's. The paper fine-tunes
for a fixed few epochs (5 in its main results) and reads test accuracy; here each
client's validation set chooses when to stop (``finetune_epochs = 5`` caps it at the
paper's budget). Unlike FL-bench, which asserts fine-tune epochs > 0 while its default
is 0, the defaults here run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from fedmoe.engine import Classifier, ClientData, Evaluation, TrainConfig, evaluate
from fedmoe.errors import ConfigError
from fedmoe.federation import Clients, State, Update
from fedmoe.methods.base import Evaluated, Federated, Method, Output, RunSpec, global_model
from fedmoe.methods.params import broadcast
from fedmoe.methods.personal import evaluate_personal, train_personal
from fedmoe.methods.split import BODY, HEAD, initial_model, join, part_of, train_part
from fedmoe.models import Params


@dataclass(frozen=True)
class FedBabuOptions:
    """``finetune_lr``: the fine-tuning learning rate (0: ``personalise.lr``);
    ``finetune_epochs``: its epochs, at most (0: ``personalise.epochs``)."""

    finetune_lr: float = 0.0
    finetune_epochs: int = 0

    def validate(self, where: str) -> None:
        if not (math.isfinite(self.finetune_lr) and self.finetune_lr >= 0):
            raise ConfigError(
                f"{where}.finetune_lr must be a finite number > 0 (0: personalise.lr), "
                f"got {self.finetune_lr}"
            )
        if self.finetune_epochs < 0:
            raise ConfigError(
                f"{where}.finetune_epochs must be >= 1 (0: personalise.epochs), "
                f"got {self.finetune_epochs}"
            )


def finetune_config(run: RunSpec, options: FedBabuOptions) -> TrainConfig:
    """How every client fine-tunes after federation: ``[personalise]`` with the
    options' learning rate and epochs where set."""
    cfg = run.personalise
    if options.finetune_lr > 0:
        cfg = run.personalise_with(options.finetune_lr)
    return replace(cfg, epochs=options.finetune_epochs or cfg.epochs)


def frozen_head(run: RunSpec, device: torch.device) -> Params:
    """The head every client keeps frozen during federation: the initial model's
    (client axis of length 1)."""
    return part_of(run.net, initial_model(run, device), HEAD)


class FedBabuRounds(Federated):
    """Body-only local training under the frozen head; the body federated."""

    def init(self, run: RunSpec, options: Any, device: torch.device) -> Params:
        return part_of(run.net, initial_model(run, device), BODY)

    def client_update(
        self,
        run: RunSpec,
        options: Any,
        server: Params,
        clients: Clients,
        round_: int,
        state: State,
    ) -> Update:
        k = len(clients.ids)
        res = train_part(
            run,
            broadcast(server, k),
            broadcast(frozen_head(run, clients.device), k),
            clients.train,
            run.federation.local,
            clients.keys(run.seed, f"fedbabu/round/{round_}"),
        )
        return Update(res.params)

    def validate(
        self, run: RunSpec, options: Any, server: Params, clients: Clients, state: State
    ) -> Evaluation:
        del state
        device = next(iter(server.values())).device
        model = join(run.net, server, frozen_head(run, device))
        return evaluate(Classifier(run.net), model, clients.val)


class FedBabu(Method):
    name = "fedbabu"
    label = "FedBABU"
    description = "a body federated under a frozen random head, then fine-tuned (FedBABU)"
    options = FedBabuOptions
    federated = FedBabuRounds()

    def personalise(
        self,
        run: RunSpec,
        options: Any,
        clients: Clients,
        inputs: Mapping[str, Output],
        federated: Output | None,
    ) -> Output:
        assert federated is not None
        model = join(run.net, global_model(federated), frozen_head(run, clients.device))
        start = broadcast(model, len(clients.ids))
        tuning = replace(run, personalise=finetune_config(run, options))
        out = train_personal(tuning, clients, start, "fedbabu/finetune", "FedBABU fine-tuning")
        return Output(out.state, out.epochs, out.best_loss, federated.info)

    def evaluate(
        self,
        run: RunSpec,
        options: Any,
        own: Output,
        inputs: Mapping[str, Output],
        data: ClientData,
    ) -> Evaluated:
        return evaluate_personal(run, own, data)
