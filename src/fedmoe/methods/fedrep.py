"""FedRep (Collins, Hassani, Mokhtari and Shakkottai, "Exploiting Shared Representations
for Personalized Federated Learning", ICML 2021), Algorithm 1.

The classifier is split into a representation (the body) and a head (the last layer
with parameters, :func:`fedmoe.models.split_head`). In each round every sampled client,
with the received body fixed, first trains its own head for ``head_epochs`` epochs, then,
with that new head fixed, trains the received body for ``body_epochs`` epochs, each with
the shared federated optimiser settings and batch size (a fresh optimiser per phase;
``federated.local_epochs`` is not used: the two options say how long each phase is).
Batches come from the per-client streams ``fedrep/head/round/<r>`` and
``fedrep/body/round/<r>``. The client sends the body only.

What is shared: the body. The server's params are the body only, aggregated as FedAvg's
sample-weighted mean (Algorithm 1's plain mean when clients are equal-sized). What is
kept on each client (its state, across rounds): its head, and the rounds it trained. All
clients start from the one initial model (FedAvg's): its body is the server's first
body and its head every client's first head, so a client (a Flower node) derives its
own without anything being sent. FedRep predicts with the global body and the client's
own head, and early stopping scores exactly that (a client not sampled yet: with the
initial head).

An opt-out client (it never trains or sends anything), and any client never sampled up
to the best round, gets the best round's global body with a head trained on its own
data with the body frozen (FedRep's own head step), from the initial head, with the
shared personalisation settings (``[personalise]``), early stopped on its validation set
(see :mod:`fedmoe.methods.split`).

Options, the paper's defaults: ``head_epochs = 10`` (>= 0; "ten local epochs ... to
train the local head") and ``body_epochs = 1`` (>= 1; "one or five epochs for the
representation", by dataset). ``head_epochs = 0`` leaves the heads at their initial
values during federation (only the body trains, under the initial head).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fedmoe.errors import ConfigError
from fedmoe.federation import Clients
from fedmoe.methods.base import RunSpec
from fedmoe.methods.split import BODY, KeptPartMethod, KeptPartRounds, train_part
from fedmoe.models import Params


@dataclass(frozen=True)
class FedRepOptions:
    """``head_epochs``: epochs of the head per round, the body fixed (>= 0);
    ``body_epochs``: epochs of the body per round after them, the head fixed (>= 1)."""

    head_epochs: int = 10
    body_epochs: int = 1

    def validate(self, where: str) -> None:
        if self.head_epochs < 0:
            raise ConfigError(f"{where}.head_epochs must be >= 0, got {self.head_epochs}")
        if self.body_epochs < 1:
            raise ConfigError(
                f"{where}.body_epochs must be at least 1 (the body is what FedRep "
                f"federates), got {self.body_epochs}"
            )


class FedRepRounds(KeptPartRounds):
    """Head epochs, then body epochs; the body federated, the head kept."""

    federates = BODY

    def local_update(
        self,
        run: RunSpec,
        options: Any,
        received: Params,
        kept: Params,
        clients: Clients,
        round_: int,
    ) -> tuple[Params, Params]:
        local = run.federation.local
        head = kept
        if options.head_epochs > 0:
            head = train_part(
                run,
                kept,
                received,
                clients.train,
                replace(local, epochs=options.head_epochs),
                clients.keys(run.seed, f"fedrep/head/round/{round_}"),
            ).params
        body = train_part(
            run,
            received,
            head,
            clients.train,
            replace(local, epochs=options.body_epochs),
            clients.keys(run.seed, f"fedrep/body/round/{round_}"),
        ).params
        return body, head


class FedRep(KeptPartMethod):
    name = "fedrep"
    label = "FedRep"
    description = "a federated body; per round, personal head epochs then body epochs (FedRep)"
    options = FedRepOptions
    federated = FedRepRounds()
    personalise_description = "FedRep heads"
