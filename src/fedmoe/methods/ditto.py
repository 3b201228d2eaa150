"""Ditto (T. Li, Hu, Beirami and Smith, "Ditto: Fair and Robust Federated Learning
Through Personalization", ICML 2021), Algorithm 1.

What is shared: the global model ``w``, trained exactly as FedAvg's (each sampled client
trains the received ``w`` on its mean NLL with the shared federated settings; the
sample-weighted mean of the updates; batches from FedAvg's per-client streams, so
Ditto's and FedAvg's global models follow the same draws). What is kept on each client
(its state, across rounds): its personal model ``v``, initialised to the global model's
initial parameters as in Ditto's code, and the number of rounds it trained. When
sampled, a client also trains ``v`` for ``personal_epochs`` epochs (the shared federated
optimiser and batch size) on

    mean NLL(v) + (lam / 2) ||v - w_received||^2,

``w_received`` being the global model it received this round, before local training
(the proximal objective of :mod:`fedmoe.methods.proximal`). Ditto predicts with ``v``,
so early stopping scores the personal models on validation (a client whose ``v`` has
not trained yet is scored with the global model, from which it will start after
federation); the best round keeps its global model and its clients' ``v``.

After federation, every client whose ``v`` never trained (the opt-out clients, which
never train or send anything, and any client never sampled up to the best round) trains
``v`` from the final (best) global model with the same objective against it, with the
shared personalisation settings (``[personalise]``), early stopped on its validation
set. The output keeps the global model (``global.*``) next to the personal models
(``model.*``); the entry reports the personal models only (FedAvg reports a global
model), with each client's rounds trained in ``details``.

Options: ``lam`` (>= 0), default 0.1: the smallest of the values the official code's
per-device search tries ({0.1, 1, 2}; its Fashion-MNIST scripts fix 1). A small ``lam``
lets the personal models move far from the global one, which is what clean, strongly
non-IID clients need; a large one mainly buys robustness to corrupted clients, which
these experiments do not model. ``lam = 0`` makes ``v`` a purely local model trained
only in the rounds its client is sampled. ``personal_epochs`` (>= 0): epochs of ``v``
per round; 0 (default) means ``federated.local_epochs``, the paper's setting (as many
local iterations for ``v`` as for ``w``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from fedmoe.engine import Classifier, ClientData, Evaluation, TrainConfig, TrainResult, evaluate
from fedmoe.errors import ConfigError
from fedmoe.federation import Clients, State, Update
from fedmoe.methods.base import (
    GLOBAL,
    Evaluated,
    Method,
    Output,
    RunSpec,
    client_state,
    global_model,
)
from fedmoe.methods.fedavg import FedAvgRounds, local_training
from fedmoe.methods.params import broadcast, prefixed, unprefixed
from fedmoe.methods.personal import MODEL, evaluate_personal, train_unfederated
from fedmoe.methods.proximal import train_proximal
from fedmoe.models import Params

#: The prefix of a client's personal model ``v`` in its state.
PERSONAL = "personal"
#: The rounds each client trained ``v`` (int64 ``(K,)``), in its state and the output.
ROUNDS = "rounds"


@dataclass(frozen=True)
class DittoOptions:
    """``lam``: the weight of the pull of ``v`` towards the received global model
    (>= 0); ``personal_epochs``: epochs of ``v`` per round (0: ``federated.local_epochs``)."""

    lam: float = 0.1
    personal_epochs: int = 0

    def validate(self, where: str) -> None:
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ConfigError(f"{where}.lam must be a finite number >= 0, got {self.lam}")
        if self.personal_epochs < 0:
            raise ConfigError(
                f"{where}.personal_epochs must be >= 0 (0: federated.local_epochs), "
                f"got {self.personal_epochs}"
            )


def personal_config(run: RunSpec, options: DittoOptions) -> TrainConfig:
    """How a sampled client trains ``v`` in a round: the shared federated settings for
    ``personal_epochs`` epochs."""
    local = run.federation.local
    return replace(local, epochs=options.personal_epochs or local.epochs)


def _predictors(server: Params, personal: Params, rounds: torch.Tensor) -> Params:
    """Each client's ``v`` where it has trained, else the global model (stacked)."""
    return {
        n: torch.where(rounds.view(-1, *[1] * (v.dim() - 1)) > 0, v, server[n])
        for n, v in personal.items()
    }


class DittoRounds(FedAvgRounds):
    """FedAvg's global rounds plus each sampled client's personal ``v`` (see the module
    docstring)."""

    def init_client_state(self, run: RunSpec, options: Any, clients: Clients) -> State:
        k, device = len(clients.ids), clients.device
        start = self.init(run, options, device)
        personal = {n: p.clone() for n, p in broadcast(start, k).items()}
        rounds = torch.zeros(k, dtype=torch.int64, device=device)
        return prefixed(personal, PERSONAL) | {ROUNDS: rounds}

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
        trained_w = local_training(run, received, clients, round_)
        keys = clients.keys(run.seed, f"ditto/personal/round/{round_}")
        personal = train_proximal(
            run.net,
            options.lam,
            unprefixed(state, PERSONAL),
            received,
            clients.train,
            personal_config(run, options),
            keys,
        ).params
        new_state = prefixed(personal, PERSONAL) | {ROUNDS: state[ROUNDS] + 1}
        return Update(trained_w, state=new_state)

    def validate(
        self, run: RunSpec, options: Any, server: Params, clients: Clients, state: State
    ) -> Evaluation:
        models = _predictors(server, unprefixed(state, PERSONAL), state[ROUNDS])
        return evaluate(Classifier(run.net), models, clients.val)


class Ditto(Method):
    name = "ditto"
    label = "Ditto"
    description = "a personal model per client pulled towards the FedAvg global model (Ditto)"
    options = DittoOptions
    federated = DittoRounds()

    def personalise(
        self,
        run: RunSpec,
        options: Any,
        clients: Clients,
        inputs: Mapping[str, Output],
        federated: Output | None,
    ) -> Output:
        assert federated is not None
        server, state = global_model(federated), client_state(federated)
        rounds = state[ROUNDS]

        def fit(them: Clients, _: torch.Tensor) -> TrainResult:
            start = broadcast(server, len(them.ids))
            return train_proximal(
                run.net,
                options.lam,
                start,
                start,
                them.train,
                run.personalise,
                them.keys(run.seed, "ditto/personalise"),
                them.val,
                run.progress("Ditto personal models", run.personalise.epochs),
            )

        res = train_unfederated(rounds, clients, unprefixed(state, PERSONAL), fit)
        own = prefixed(server, GLOBAL) | prefixed(res.params, MODEL) | {ROUNDS: rounds}
        return Output(own, res.epochs, res.best_loss, federated.info)

    def evaluate(
        self,
        run: RunSpec,
        options: Any,
        own: Output,
        inputs: Mapping[str, Output],
        data: ClientData,
    ) -> Evaluated:
        ev = evaluate_personal(run, own, data)
        return Evaluated(ev.accuracy, scalars={ROUNDS: own.state[ROUNDS]})

    def details(
        self, options: Any, scalars: Mapping[str, list[float]], variant: str | None = None
    ) -> dict[str, Any]:
        rounds = [int(r) for r in scalars[ROUNDS]]
        return {
            "lam": options.lam,
            "rounds_trained": rounds,
            "personalised_after_federation": [c for c, r in enumerate(rounds) if r == 0],
        }
