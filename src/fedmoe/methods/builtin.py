"""The built-in methods, registered in this order."""

from fedmoe.methods import (
    apfl,
    centralised,
    ditto,
    fedavg,
    fedbabu,
    fedper,
    fedprox,
    fedrep,
    finetune,
    ifca,
    lg_fedavg,
    local,
    moe,
    moe_ditto,
    moe_ifca,
    moe_plus,
    moe_plus_fedbabu,
    moe_staged,
    perfedavg,
    pfedme,
    pfl_moe,
)
from fedmoe.methods.registry import register

for _method in (
    fedavg.FedAvg,
    local.Local,
    finetune.FineTune,
    moe.Moe,
    moe_staged.MoeStaged,
    moe_plus.MoePlus,
    ifca.Ifca,
    moe_ifca.MoeIfca,
    centralised.Centralised,
    fedprox.FedProx,
    ditto.Ditto,
    perfedavg.PerFedAvg,
    pfl_moe.PflMoe,
    apfl.Apfl,
    pfedme.PFedMe,
    fedper.FedPer,
    fedrep.FedRep,
    lg_fedavg.LgFedAvg,
    fedbabu.FedBabu,
    moe_ditto.MoeDitto,
    moe_plus_fedbabu.MoePlusFedBabu,
):
    register(_method)

#: What a config runs when it lists no methods: the paper's four.
DEFAULT_METHODS = (fedavg.FedAvg.name, local.Local.name, finetune.FineTune.name, moe.Moe.name)

#: Keys of format-1 configs (before methods were values) that are gone, and what to
#: write instead (docs/results-format.md).
FORMAT_ONE_KEYS = {
    "fedavg": "the [fedavg] section is now [federated] (same keys)",
    "moe_plus": 'list "moe-plus" in methods (methods = [..., "moe-plus"]) and put its '
    "options (all but enabled) in [method.moe-plus]",
    "clustered": 'list "ifca" and "moe-ifca" in methods and write method.ifca.models '
    "for clustered.models",
    "centralised": 'list "centralised" in methods and put its options (all but enabled) '
    "in [method.centralised]",
    "moe_staged": 'list "moe-staged" in methods',
    "personalise.moe_lr": "write method.moe.lr (and method.moe-staged.lr)",
    "personalise.pool": "write method.moe.pool",
    "personalise.train_specialist": "write method.moe.train_specialist",
    "personalise.gate_bias": "write method.moe.gate_bias",
    "personalise.moe_schedule": "write method.moe.schedule",
}
