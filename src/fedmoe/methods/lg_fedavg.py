"""LG-FedAvg (Liang, Liu, Ziyin, Allen, Auerbach, Brent, Salakhutdinov and Morency,
"Think Locally, Act Globally: Federated Learning with Local and Global
Representations", arXiv 2001.01523, 2020).

The paper's way round: each client learns its own *local representation* (the lower
layers: here the body, every layer but the last with parameters) and the clients
federate a *global model on top* (here the head, the last layer,
:func:`fedmoe.models.split_head`). FL-bench shares the first layers instead, the
paper's inverse; fedmoe does not. In each round every sampled client trains its own
body and the received head jointly on its data, exactly as FedAvg's local training (the
shared federated settings, FedAvg's per-client batch streams), and sends the head only.

What is shared: the head. The server's params are the head only, aggregated as FedAvg's
sample-weighted mean. What is kept on each client (its state, across rounds): its body,
and the rounds it trained. All clients start from the one initial model (FedAvg's): its
head is the server's first head and its body every client's first body, so a client
(a Flower node) derives its own without anything being sent. LG-FedAvg predicts with the
client's own body under the global head, and early stopping scores exactly that (a
client not sampled yet: with the initial body).

An opt-out client (it never trains or sends anything), and any client never sampled up
to the best round, gets a body trained locally under the best round's global head (the
head frozen), from the initial body, with the shared personalisation settings
(``[personalise]``), early stopped on its validation set (see
:mod:`fedmoe.methods.split`). No options: the split is at the head, the rest is the shared
federated settings.
"""

from __future__ import annotations

from fedmoe.methods.split import HEAD, KeptPartMethod, KeptPartRounds


class LgFedAvgRounds(KeptPartRounds):
    """Joint local training; the head federated, the body kept."""

    federates = HEAD


class LgFedAvg(KeptPartMethod):
    name = "lg-fedavg"
    label = "LG-FedAvg"
    description = "a personal body under a federated head (LG-FedAvg)"
    federated = LgFedAvgRounds()
    personalise_description = "LG-FedAvg bodies"
