"""What a node computes, with fedmoe's engine and methods at K=1 (no Flower here).

Every function uses the same configs and per-client random keys as the embedded
simulator (:func:`fedmoe.experiment.protocol.run_experiment`), so client ``i`` trained
here follows the same random streams as client ``i`` trained in a cohort; results
differ only by floating-point rounding of batched versus single-client kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedmoe import rng
from fedmoe.engine import Classifier, Objective, evaluate, train
from fedmoe.experiment.config import ExperimentConfig
from fedmoe.experiment.protocol import (
    evaluate_mixture,
    fedavg_config,
    mixture_config,
    personalise_config,
)
from fedmoe.flower.node_data import NodeData
from fedmoe.methods import Mixture, finetune, local, moe
from fedmoe.methods.mixture import GATE, SPECIALIST
from fedmoe.methods.params import prefixed
from fedmoe.models import Network, Params

PERSONALISED = ("finetune", "local", "moe")
SPLITS = ("local_test", "global_test")
GATE_GROUPS = ("all", "majority", "other")


def reference_params(net: Network, dtype: torch.dtype, device: torch.device) -> Params:
    """Zero tensors with ``net``'s parameter names and shapes (client axis 1): what a
    received model is validated against."""
    return {
        s.name: torch.zeros((1, *s.shape), dtype=dtype, device=device) for s in net.param_specs()
    }


def mixture_reference(
    net: Network, gate_net: Network, dtype: torch.dtype, device: torch.device
) -> Params:
    """Reference for a mixture's trained parameters (``specialist.*`` and ``gate.*``)."""
    return prefixed(reference_params(net, dtype, device), SPECIALIST) | prefixed(
        reference_params(gate_net, dtype, device), GATE
    )


def local_update(
    cfg: ExperimentConfig, data: NodeData, net: Network, global_params: Params, round_: int
) -> Params:
    """FedAvg's local training of this client in round ``round_`` from the global model."""
    fcfg = fedavg_config(cfg)
    device = data.train.x.device
    keys = rng.client_keys(cfg.seed, torch.tensor([data.client]), f"fedavg/round/{round_}")
    result = train(Classifier(net), global_params, data.train, fcfg.local, keys.to(device))
    return result.params


def validate(net: Network, params: Params, data: NodeData) -> tuple[float, float, int]:
    """The model's mean loss and accuracy on this client's validation set, and its size."""
    ev = evaluate(Classifier(net), params, data.val)
    return float(ev.loss[0]), float(ev.accuracy[0]), int(ev.n[0])


@dataclass(frozen=True)
class Personalised:
    """This client's personalised models (each with a client axis of length 1): the
    fine-tuned and the local model, the mixture's ``specialist.*`` and ``gate.*``, the
    epochs each trained and its best validation loss."""

    finetune: Params
    local: Params
    moe: Params
    epochs: dict[str, int]
    best_loss: dict[str, float]


def personalise(
    cfg: ExperimentConfig,
    data: NodeData,
    net: Network,
    gate_net: Network,
    global_params: Params,
) -> Personalised:
    """FT, Local and MoE for this client, as in the embedded protocol."""
    clients = torch.tensor([data.client])
    pcfg = personalise_config(cfg, cfg.personalise.lr)
    ft = finetune(net, global_params, data.train, data.val, clients, pcfg, cfg.seed)
    loc = local(net, data.train, data.val, clients, pcfg, cfg.seed)
    mix = moe(
        net,
        gate_net,
        global_params,
        ft.params,
        data.train,
        data.val,
        clients,
        personalise_config(cfg, cfg.personalise.moe_lr),
        mixture_config(cfg),
        cfg.seed,
    )
    results = {"finetune": ft, "local": loc, "moe": mix}
    return Personalised(
        finetune=ft.params,
        local=loc.params,
        moe=mix.params,
        epochs={name: int(r.epochs[0]) for name, r in results.items()},
        best_loss={name: float(r.best_loss[0]) for name, r in results.items()},
    )


def evaluate_models(
    cfg: ExperimentConfig,
    data: NodeData,
    net: Network,
    gate_net: Network,
    global_params: Params,
    models: Personalised,
) -> dict[str, float]:
    """Accuracy of FedAvg, Local, FT and MoE on the local and the global test set
    (``"<method>.<split>"``) and the mixture's mean gate weight on the specialist
    (``"gate.<split>.<all|majority|other>"``, NaN where the group is empty)."""
    mixture = Mixture(net, gate_net, global_params, cfg.personalise.pool)
    objectives: dict[str, tuple[Objective, Params]] = {
        "fedavg": (Classifier(net), global_params),
        "local": (Classifier(net), models.local),
        "finetune": (Classifier(net), models.finetune),
    }
    device = data.test.x.device
    majority = torch.zeros(1, data.num_classes, dtype=torch.bool, device=device)
    majority[0, list(data.majority)] = True
    metrics: dict[str, float] = {}
    for split in SPLITS:
        split_data = data.test if split == "local_test" else data.global_test
        for name, (objective, params) in objectives.items():
            metrics[f"{name}.{split}"] = float(evaluate(objective, params, split_data).accuracy[0])
        ev, gate = evaluate_mixture(mixture, models.moe, split_data, majority)
        metrics[f"moe.{split}"] = float(ev.accuracy[0])
        for group in GATE_GROUPS:
            value = gate[group][0]
            metrics[f"gate.{split}.{group}"] = math.nan if value is None else float(value)
    return metrics
