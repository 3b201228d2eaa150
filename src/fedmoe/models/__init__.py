"""Networks as templates, parameters kept outside as dicts of tensors stacked on a
client axis: the fused built-in networks (:mod:`fedmoe.models.fused`) and any
``torch.nn.Module`` through ``torch.func`` (:mod:`fedmoe.models.module`). Both satisfy
:class:`~fedmoe.models.base.Model`, which is all the engine and the methods use."""

from fedmoe.models.base import Model, Params, ParamSpec, head_names, split_head
from fedmoe.models.fused import (
    ARCHITECTURES,
    Network,
    build_network,
    default_architecture,
    stack,
    unstack,
)
from fedmoe.models.module import ModuleNetwork, load_factory, register_model, registered_model

__all__ = [
    "ARCHITECTURES",
    "Model",
    "ModuleNetwork",
    "Network",
    "ParamSpec",
    "Params",
    "build_network",
    "default_architecture",
    "head_names",
    "load_factory",
    "register_model",
    "registered_model",
    "split_head",
    "stack",
    "unstack",
]
