"""The built-in methods, imported so each registers itself (in this order)."""

from fedmoe.methods import (  # noqa: F401
    centralised,
    fedavg,
    finetune,
    ifca,
    local,
    moe,
    moe_ifca,
    moe_plus,
    moe_staged,
)

#: What a config runs when it lists no methods: the paper's four.
DEFAULT_METHODS = (fedavg.FedAvg.name, local.Local.name, finetune.FineTune.name, moe.Moe.name)
