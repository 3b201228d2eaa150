"""FedPer (Arivazhagan, Aggarwal, Singh and Choudhary, "Federated Learning with
Personalization Layers", arXiv 1912.00818, 2019).

The classifier is split into base layers (the body) and personalisation layers (the
head: here the last layer with parameters, :func:`fedmoe.models.split_head`; the paper
also tries more personalisation layers). In each round every sampled client trains
body and head *jointly* on its data, exactly as FedAvg's local training (the shared
federated settings, FedAvg's per-client batch streams), starting from the received
body and its own head; it sends the body only.

What is shared: the body. The server's params are the body only, aggregated as FedAvg's
sample-weighted mean. What is kept on each client (its state, across rounds): its head,
and the rounds it trained. All clients start from the one initial model, as in the
paper: the body and every client's head are the initial model's (FedAvg's), so the
heads start identical and a client (a Flower node) derives its own without anything
being sent. FedPer predicts with the global body and the client's own head, and early
stopping scores exactly that (a client not sampled yet: with the initial head).

An opt-out client (it never trains or sends anything), and any client never sampled up
to the best round, gets the best round's global body with a head trained on its own
data with the body frozen, from the initial head, with the shared personalisation
settings (``[personalise]``), early stopped on its validation set (see
:mod:`fedmoe.methods.split`). No options: the split is at the head, the rest is the
shared federated settings.
"""

from __future__ import annotations

from fedmoe.methods.split import BODY, KeptPartMethod, KeptPartRounds


class FedPerRounds(KeptPartRounds):
    """Joint local training; the body federated, the head kept."""

    federates = BODY


class FedPer(KeptPartMethod):
    name = "fedper"
    label = "FedPer"
    description = "a federated body with a personal head trained jointly (FedPer)"
    federated = FedPerRounds()
    personalise_description = "FedPer heads"
