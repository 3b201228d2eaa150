"""What the body/head methods share (FedPer, FedRep, LG-FedAvg, FedBABU).

The classifier is split into a *body* (every layer up to the last one with parameters)
and a *head* (that last layer): :func:`fedmoe.models.split_head`. Every one of these
methods starts from the one initial model FedAvg starts from (:func:`initial_model`:
the same parameters for every client, a pure function of the seed, so a Flower node
derives it itself and nobody sends it).

- :class:`KeptPartRounds`: the federated hooks of a method that federates one part and
  keeps the other on each client (FedPer and FedRep federate the body and keep the
  head; LG-FedAvg federates the head and keeps the body). The server's params are the
  federated part only; each client's state holds its kept part (``kept.*``, starting
  from the initial model's) and how many rounds it trained (``rounds``, int64).
  Validation scores what the method predicts with: the server's part joined with each
  client's kept part, as the state holds it (a client not sampled yet has the initial
  kept part).
- :class:`KeptPartMethod`: their personalisation and evaluation. A client whose kept
  part never trained in federation (an opt-out client, which never trains or sends
  anything, or one never sampled up to the best round) trains it on its own data after
  federation, the federated part frozen, with the shared personalisation settings
  (``[personalise]``), early stopped on its validation set; the others keep theirs.
  Each client predicts with the best round's federated part joined with its kept part.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch

from fedmoe.engine import (
    Classifier,
    ClientData,
    Evaluation,
    TrainConfig,
    TrainResult,
    evaluate,
    train,
)
from fedmoe.engine.train import ProgressFn
from fedmoe.federation import Clients, State, Update
from fedmoe.methods.base import (
    GLOBAL,
    Evaluated,
    Federated,
    Method,
    Output,
    RunSpec,
    client_state,
    global_model,
)
from fedmoe.methods.fedavg import FedAvgRounds, local_training
from fedmoe.methods.params import broadcast, prefixed, rows, unprefixed
from fedmoe.methods.personal import MODEL, evaluate_personal, train_unfederated
from fedmoe.models import Model, Params, split_head

#: A part of the classifier.
Part = Literal["body", "head"]
BODY: Part = "body"
HEAD: Part = "head"
#: The prefix of a client's kept part in its state.
KEPT = "kept"
#: The rounds each client trained (int64 ``(K,)``), in its state and the output.
ROUNDS = "rounds"


def other(part: Part) -> Part:
    """The part that is not ``part``."""
    return HEAD if part == BODY else BODY


def part_of(net: Model, params: Params, part: Part) -> Params:
    """The ``part`` (body or head) of ``params``."""
    body, head = split_head(net, params)
    return body if part == BODY else head


def join(net: Model, *parts: Params) -> Params:
    """Parts (stacked alike) as one model, in ``net``'s parameter order, contiguous."""
    merged: Params = {}
    for p in parts:
        merged |= p
    return {s.name: merged[s.name].contiguous() for s in net.param_specs()}


def initial_model(run: RunSpec, device: torch.device) -> Params:
    """The one initial model (client axis of length 1): FedAvg's, so these methods and
    FedAvg start from the same parameters."""
    return FedAvgRounds().init(run, None, device)


def train_part(
    run: RunSpec,
    live: Params,
    fixed: Params,
    data: ClientData,
    cfg: TrainConfig,
    keys: torch.Tensor,
    val: ClientData | None = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train one part ``live`` of K clients' classifiers on their mean NLL, the other
    part ``fixed`` read but not trained (both stacked, one row per client)."""
    return train(Classifier(run.net), live, data, cfg, keys, val, progress, fixed)


class KeptPartRounds(Federated):
    """Federated hooks that federate :attr:`federates` and keep the other part on each
    client (see the module docstring). The default local update is FedAvg's local
    training of the whole model (received part joined with the kept part), with the
    shared federated settings and FedAvg's per-client streams; the client sends the
    federated part and keeps the rest."""

    #: The part the server holds and aggregates.
    federates: ClassVar[Part]

    def init(self, run: RunSpec, options: Any, device: torch.device) -> Params:
        return part_of(run.net, initial_model(run, device), self.federates)

    def init_client_state(self, run: RunSpec, options: Any, clients: Clients) -> State:
        k, device = len(clients.ids), clients.device
        kept = part_of(run.net, initial_model(run, device), other(self.federates))
        state = {n: p.clone() for n, p in broadcast(kept, k).items()}
        return prefixed(state, KEPT) | {ROUNDS: torch.zeros(k, dtype=torch.int64, device=device)}

    def local_update(
        self,
        run: RunSpec,
        options: Any,
        received: Params,
        kept: Params,
        clients: Clients,
        round_: int,
    ) -> tuple[Params, Params]:
        """The cohort's local training in ``round_`` from the ``received`` federated part
        and the ``kept`` part (both stacked, one row per client): the trained
        (federated, kept) parts."""
        trained = local_training(run, received | kept, clients, round_)
        return part_of(run.net, trained, self.federates), part_of(
            run.net, trained, other(self.federates)
        )

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
        sent, kept = self.local_update(
            run, options, received, unprefixed(state, KEPT), clients, round_
        )
        return Update(sent, state=prefixed(kept, KEPT) | {ROUNDS: state[ROUNDS] + 1})

    def validate(
        self, run: RunSpec, options: Any, server: Params, clients: Clients, state: State
    ) -> Evaluation:
        models = join(run.net, broadcast(server, clients.val.num_clients), unprefixed(state, KEPT))
        return evaluate(Classifier(run.net), models, clients.val)


class KeptPartMethod(Method):
    """Personalisation and evaluation of a method whose federated phase is a
    :class:`KeptPartRounds` (see the module docstring). The output holds the best
    round's federated part (``global.*``), each client's model (``model.*``) and the
    rounds it trained (``rounds``)."""

    #: How the progress bar of the after-federation training reads.
    personalise_description: ClassVar[str]

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
        kept = unprefixed(state, KEPT)

        def fit(them: Clients, where: torch.Tensor) -> TrainResult:
            return train_part(
                run,
                rows(kept, where),
                broadcast(server, len(them.ids)),
                them.train,
                run.personalise,
                them.keys(run.seed, f"{self.name}/personalise"),
                them.val,
                run.progress(self.personalise_description, run.personalise.epochs),
            )

        res = train_unfederated(rounds, clients, kept, fit)
        models = join(run.net, broadcast(server, len(clients.ids)), res.params)
        own = prefixed(server, GLOBAL) | prefixed(models, MODEL) | {ROUNDS: rounds}
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
        hooks = self.federated
        assert isinstance(hooks, KeptPartRounds)
        rounds = [int(r) for r in scalars[ROUNDS]]
        return {
            "federated_part": hooks.federates,
            "rounds_trained": rounds,
            "personalised_after_federation": [c for c, r in enumerate(rounds) if r == 0],
        }
