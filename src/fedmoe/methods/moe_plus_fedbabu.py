"""MoE+ (FedBABU): the MoE+ gate (its options as ``moe-plus``'s) over the frozen
FedBABU personal model and the frozen FedAvg global model: the paper's "combinations of
different kinds" with the fitted gate, for when FedBABU's specialists are stronger than
fine-tuned ones (the head-to-head's tuning found them the strongest specialists on
validation). FedBABU's fine-tuning is its own, as ``fedbabu`` runs it."""

from __future__ import annotations

from fedmoe.methods.fedavg import FedAvg
from fedmoe.methods.fedbabu import FedBabu
from fedmoe.methods.moe_plus import MoePlus

#: Paired differences: against FedBABU and MoE+ on the clients' own data (where they
#: ran), against FedAvg and FedBABU on the global test set.
BASELINES: dict[str, tuple[str, ...]] = {
    "local_test": (FedBabu.name, MoePlus.name),
    "global_test": (FedAvg.name, FedBabu.name),
}


class MoePlusFedBabu(MoePlus):
    name = "moe-plus-fedbabu"
    label = "MoE+ (FedBABU)"
    description = "the MoE+ gate over the frozen FedBABU specialist and FedAvg global model"
    needs = (FedAvg.name, FedBabu.name)
    baselines = BASELINES
    specialist_method = FedBabu.name
