"""What a node computes, with fedmoe's engine and methods at K=1 (no Flower here).

Every function uses the same configs and per-client random keys as the embedded
simulator (:func:`fedmoe.experiment.protocol.run_experiment`), so client ``i`` trained
here follows the same random streams as client ``i`` trained in a cohort; results
differ only by floating-point rounding of batched versus single-client kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from fedmoe import rng
from fedmoe.engine import Classifier, Objective, evaluate, train
from fedmoe.experiment.config import ExperimentConfig
from fedmoe.experiment.extras import gate_config, gate_experts, plus_gate_net, restored_gate
from fedmoe.experiment.protocol import (
    evaluate_mixture,
    fedavg_config,
    mixture_config,
    personalise_config,
    torch_dtype,
)
from fedmoe.experiment.summary import gate_summary
from fedmoe.flower.node_data import NodeData
from fedmoe.methods import Mixture, PersonalisationResult, finetune, local, moe
from fedmoe.methods.fedavg import best_models, evaluate_each
from fedmoe.methods.gating import (
    PRIOR_SCALE,
    Experts,
    FittedGate,
    evaluate_gate,
    fit_gate,
    log_prior_ratio,
)
from fedmoe.methods.mixture import GATE, SPECIALIST
from fedmoe.methods.params import prefixed, rows
from fedmoe.models import Network, Params

PERSONALISED = ("finetune", "local", "moe")
#: The method a node adds with ``moe_plus.enabled``.
MOE_PLUS = "moe-plus"
#: The methods a node adds with ``clustered.enabled``.
IFCA, MOE_IFCA = "ifca", "moe-ifca"
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


def moe_plus_net(
    cfg: ExperimentConfig, data: NodeData, net: Network, gate_net: Network, clusters: int = 0
) -> Network:
    """The gate network ``moe-plus`` (``clusters`` > 0: ``moe-ifca``) fits on this node."""
    return plus_gate_net(
        cfg, net, gate_net, data.input_shape, data.num_classes, gate_config(cfg), clusters
    )


def moe_plus_reference(cfg: ExperimentConfig, data: NodeData, plus_net: Network) -> Params:
    """Reference for the parameters of a fitted ``moe-plus`` gate over ``plus_net``
    (``gate.*``, and ``prior.scale`` with ``moe_plus.prior``)."""
    dtype, device = torch_dtype(cfg), data.train.x.device
    ref = prefixed(reference_params(plus_net, dtype, device), GATE)
    if cfg.moe_plus.prior:
        ref[PRIOR_SCALE] = torch.zeros(1, 1, dtype=dtype, device=device)
    return ref


def local_update(
    cfg: ExperimentConfig, data: NodeData, net: Network, global_params: Params, round_: int
) -> Params:
    """FedAvg's local training of this client in round ``round_`` from the global model."""
    fcfg = fedavg_config(cfg)
    device = data.train.x.device
    keys = rng.client_keys(cfg.seed, torch.tensor([data.client]), f"fedavg/round/{round_}")
    result = train(Classifier(net), global_params, data.train, fcfg.local, keys.to(device))
    return result.params


def cluster_update(
    cfg: ExperimentConfig, data: NodeData, net: Network, clusters: Params, round_: int
) -> tuple[Params, int]:
    """IFCA's local training in round ``round_``: the cluster model (of ``clusters``,
    leading axis ``M``) with the lowest loss on this client's training data, trained as
    FedAvg's local update; and which model that was."""
    chosen = best_models(Classifier(net), clusters, data.train)
    return local_update(cfg, data, net, rows(clusters, chosen), round_), int(chosen[0])


def validate(net: Network, params: Params, data: NodeData) -> tuple[float, float, int]:
    """The model's mean loss and accuracy on this client's validation set, and its size;
    with several models (leading axis), those of the one with the lowest loss."""
    every = evaluate_each(Classifier(net), params, data.val)
    best = int(every.loss[:, 0].argmin())
    return float(every.loss[best, 0]), float(every.accuracy[best, 0]), int(every.n[0])


@dataclass(frozen=True)
class Personalised:
    """This client's personalised models (each with a client axis of length 1): the
    fine-tuned and the local model, the mixture's ``specialist.*`` and ``gate.*``, the
    epochs each trained and its best validation loss; with ``moe_plus.enabled``, the
    ``moe-plus`` gate fitted over the fine-tuned specialist and the global model; with
    ``clustered.enabled``, the cluster model ``ifca`` picks (lowest validation loss) and
    the ``moe-ifca`` gate over the specialist, the global and the cluster models."""

    finetune: Params
    local: Params
    moe: Params
    epochs: dict[str, int]
    best_loss: dict[str, float]
    moe_plus: FittedGate | None = None
    ifca_model: int | None = None
    moe_ifca: FittedGate | None = None


def personalise(
    cfg: ExperimentConfig,
    data: NodeData,
    net: Network,
    gate_net: Network,
    global_params: Params,
    clusters: Params | None = None,
) -> Personalised:
    """FT, Local and MoE (and ``moe-plus`` with ``moe_plus.enabled``; ``ifca`` and
    ``moe-ifca`` over the ``clusters`` models, if given) for this client, as in the
    embedded protocol."""
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
    results: dict[str, PersonalisationResult | FittedGate] = {
        "finetune": ft,
        "local": loc,
        "moe": mix,
    }
    config = gate_config(cfg)

    def fit(train_ex: Experts, val_ex: Experts) -> FittedGate:
        return fit_gate(
            net,
            moe_plus_net(cfg, data, net, gate_net, train_ex.num_clusters),
            train_ex,
            val_ex,
            log_prior_ratio(data.train, data.num_classes),
            config,
            personalise_config(cfg, cfg.moe_plus.lr),
            clients,
            cfg.seed,
        )

    plus = ifca_model = moe_ifca = None
    if cfg.moe_plus.enabled or clusters is not None:
        # The frozen experts' outputs, once: moe-plus gates over them without the
        # cluster models, moe-ifca with them.
        train_ex, val_ex = (
            gate_experts(net, ft.params, global_params, split, config, clusters)
            for split in (data.train, data.val)
        )
        if cfg.moe_plus.enabled:
            plus = results[MOE_PLUS] = fit(_without_clusters(train_ex), _without_clusters(val_ex))
        if clusters is not None:
            ifca_model = int(best_models(Classifier(net), clusters, data.val)[0])
            moe_ifca = results[MOE_IFCA] = fit(train_ex, val_ex)
    return Personalised(
        finetune=ft.params,
        local=loc.params,
        moe=mix.params,
        epochs={name: int(r.epochs[0]) for name, r in results.items()},
        best_loss={name: float(r.best_loss[0]) for name, r in results.items()},
        moe_plus=plus,
        ifca_model=ifca_model,
        moe_ifca=moe_ifca,
    )


def restore_moe_plus(
    cfg: ExperimentConfig,
    data: NodeData,
    plus_net: Network,
    params: Params,
    temperatures: tuple[float, ...],
    epochs: int,
) -> FittedGate:
    """The ``moe-plus`` (or ``moe-ifca``) gate this node fitted over ``plus_net``
    (:func:`moe_plus_net`), from its parameters, the specialist's, the global expert's
    and any cluster models' temperatures, in that order, and the epochs it trained (its
    best stopping loss is not kept: NaN)."""
    dtype, device = torch.float64, data.train.x.device
    one = torch.ones(1, dtype=dtype, device=device)
    state = {
        "params": params,
        "t_specialist": one * temperatures[0],
        "t_global": one * temperatures[1],
        "epochs": torch.tensor([epochs], device=device),
        "best_loss": one * math.nan,
    }
    if len(temperatures) > 2:
        state["t_clusters"] = torch.tensor([temperatures[2:]], dtype=dtype, device=device)
    return restored_gate(
        state,
        gate_config(cfg),
        plus_net,
        data.num_classes,
        log_prior_ratio(data.train, data.num_classes),
    )


def evaluate_models(
    cfg: ExperimentConfig,
    data: NodeData,
    net: Network,
    gate_net: Network,
    global_params: Params,
    models: Personalised,
    clusters: Params | None = None,
) -> dict[str, float]:
    """Accuracy of FedAvg, Local, FT and MoE (and ``moe-plus``, ``ifca`` and
    ``moe-ifca`` over the ``clusters`` models, if fitted) on the local and the global
    test set (``"<method>.<split>"``) and the mixtures' mean gate weight on the
    specialist (``"gate.<split>.<all|majority|other>"``, ``"gate-plus..."`` for
    ``moe-plus``, ``"gate-ifca..."`` for ``moe-ifca``; NaN where the group is empty)."""
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
        metrics |= _gate_metrics("gate", split, gate)
        gates = [("gate-plus", MOE_PLUS, models.moe_plus)]
        if models.moe_ifca is not None and clusters is not None:
            gates.append(("gate-ifca", MOE_IFCA, models.moe_ifca))
            chosen = rows(clusters, torch.tensor([models.ifca_model], device=device))
            ev = evaluate(Classifier(net), chosen, split_data)
            metrics[f"{IFCA}.{split}"] = float(ev.accuracy[0])
        fitted = [(prefix, name, fit) for prefix, name, fit in gates if fit is not None]
        if not fitted:
            continue
        # Every gate was fitted with the same gate config (moe_plus.*), so the frozen
        # experts' outputs are computed once, with the cluster models if moe-ifca ran.
        config = fitted[0][2].config
        all_experts = gate_experts(
            net, models.finetune, global_params, split_data, config, clusters
        )
        for prefix, name, fit in fitted:
            experts = all_experts if name == MOE_IFCA else _without_clusters(all_experts)
            ev, g = evaluate_gate(fit, experts)
            metrics[f"{name}.{split}"] = float(ev.accuracy[0])
            gate = gate_summary(g, experts.y, experts.valid(), majority)
            metrics |= _gate_metrics(prefix, split, gate)
    return metrics


def _without_clusters(experts: Experts) -> Experts:
    """The same outputs without the cluster models' (what ``moe-plus`` gates over)."""
    return replace(experts, log_pc=None)


def _gate_metrics(prefix: str, split: str, gate: dict[str, Any]) -> dict[str, float]:
    """One client's gate statistics (:func:`~fedmoe.experiment.summary.gate_summary`)
    as ``"<prefix>.<split>.<group>"`` metrics."""
    values = {}
    for group in GATE_GROUPS:
        value = gate[group][0]
        values[f"{prefix}.{split}.{group}"] = math.nan if value is None else float(value)
    return values
