"""The gate methods' common parts (``moe-plus`` and the methods built like it): their
options, the gate network, the frozen experts' outputs on a split, and a fitted gate
kept as (and restored from) a method state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from fedmoe.engine import ClientData
from fedmoe.errors import ConfigError
from fedmoe.federation import Clients, State
from fedmoe.methods.base import Evaluated, GateValues, RunSpec
from fedmoe.methods.gating import (
    ClusterExperts,
    Experts,
    FittedGate,
    GateConfig,
    GateData,
    GateInputs,
    GateMixture,
    cache_experts,
    evaluate_gate,
    fit_gate,
    image_inputs,
    label_counts,
)
from fedmoe.methods.params import prefixed, unprefixed
from fedmoe.models import Model, Params, build_network
from fedmoe.summary import summarise

#: The clients' log prior ratios and the classes they have seen, in a gate method's state.
RATIO, SEEN = "ratio", "seen"


@dataclass(frozen=True)
class GateOptions:
    """How the gate is fitted (see :mod:`fedmoe.methods.gating`): ``inputs``, ``data``,
    ``calibrate``, ``prior``, ``adjust``, its learning rate ``lr`` (the other training
    settings are ``[personalise]``'s) and the ``fallback`` rule (0: off)."""

    inputs: GateInputs = "features"
    data: GateData = "heldout"
    calibrate: bool = True
    prior: bool = True
    adjust: bool = True
    lr: float = 1e-3
    fallback: float = 0.0

    def validate(self, where: str) -> None:
        if self.lr <= 0:
            raise ConfigError(f"{where}.lr must be positive, got {self.lr}")
        if not 0 <= self.fallback < 1:
            raise ConfigError(f"{where}.fallback must be in [0, 1), got {self.fallback}")

    def gate(self) -> GateConfig:
        return GateConfig(
            self.inputs, self.data, self.calibrate, self.prior, self.adjust, self.fallback
        )


def check_heldout(where: str, config: GateConfig, run_config: Mapping[str, Any]) -> None:
    """``data = "heldout"`` splits each client's validation set in two."""
    val = int(run_config["partition"]["val"])
    if config.data == "heldout" and val < 2:
        raise ConfigError(
            f"{where}.data = 'heldout' splits each client's validation set in two (gate fit, "
            f"early stopping) and needs partition.val >= 2, got {val}"
        )


def gate_network(run: RunSpec, config: GateConfig, clusters: int = 0) -> Model:
    """The gate: an MLP over the global expert's features, or the paper's gate
    architecture over the input; ``1 + clusters`` outputs."""
    if config.inputs == "image":
        return run.gate_net.as_gate(1 + clusters)
    return build_network(
        "mlp",
        (run.net.feature_size,),
        run.num_classes,
        gate=True,
        dropout=run.dropout,
        gate_outputs=1 + clusters,
    )


def experts_on(
    run: RunSpec,
    specialists: Params,
    global_params: Params,
    data: ClientData,
    clusters: ClusterExperts | None,
    inputs: set[str],
) -> dict[str, Experts]:
    """The frozen experts' outputs on ``data`` with each kind of gate ``inputs`` needed
    (``features`` and/or ``image``), computed once."""
    experts = cache_experts(run.net, specialists, global_params, data, clusters)
    out = {"features": experts}
    if "image" in inputs:
        out["image"] = replace(experts, gate_in=image_inputs(data))
    return out


def fit(
    run: RunSpec,
    config: GateConfig,
    lr: float,
    clients: Clients,
    train: Experts,
    val: Experts,
    description: str,
) -> FittedGate:
    """Fit each client's gate ``config`` over the experts' ``train`` / ``val`` outputs."""
    cfg = run.personalise_with(lr)
    return fit_gate(
        run.net,
        gate_network(run, config, train.num_clusters),
        train,
        val,
        label_counts(clients.train, run.num_classes),
        config,
        cfg,
        clients.ids,
        run.seed,
        run.progress(description, cfg.epochs),
    )


def client_state(fit: FittedGate) -> State:
    """What every gate of a method shares: the clients' prior ratios and seen classes."""
    assert fit.seen is not None
    return {RATIO: fit.ratio, SEEN: fit.seen}


def gate_state(fit: FittedGate, prefix: str) -> State:
    """A fitted gate's tensors under ``prefix`` (what its clients share is kept once,
    :func:`client_state`, by the caller)."""
    state = prefixed(fit.params, f"{prefix}.param")
    state[f"{prefix}.t_specialist"] = fit.t_specialist
    state[f"{prefix}.t_global"] = fit.t_global
    if fit.t_clusters is not None:
        state[f"{prefix}.t_clusters"] = fit.t_clusters
    return state


def restored(
    run: RunSpec, state: State, prefix: str, config: GateConfig, clusters: int = 0
) -> FittedGate:
    """The fitted gate :func:`gate_state` kept under ``prefix``."""
    gate_net = gate_network(run, config, clusters)
    ones = torch.ones_like(state[f"{prefix}.t_global"])
    return FittedGate(
        config,
        GateMixture(gate_net, run.num_classes, clusters),
        unprefixed(state, f"{prefix}.param"),
        state[f"{prefix}.t_specialist"],
        state[f"{prefix}.t_global"],
        state[RATIO],
        ones,
        ones,
        state.get(f"{prefix}.t_clusters"),
        state.get(SEEN),
    )


def evaluated(fit: FittedGate, experts: Experts) -> Evaluated:
    """A fitted gate's accuracy and gate values on ``experts``, with its temperatures
    as per-client scalars."""
    ev, g = evaluate_gate(fit, experts)
    scalars = {"temperature.specialist": fit.t_specialist, "temperature.global": fit.t_global}
    return Evaluated(ev.accuracy, GateValues(g, experts.y, experts.valid()), scalars=scalars)


def variant_details(config: GateConfig, scalars: Mapping[str, list[float]]) -> dict[str, Any]:
    """A gate variant's options and temperatures, for results.json."""
    return {
        "options": asdict(config),
        "temperature": {
            "specialist": summarise(
                torch.tensor(scalars["temperature.specialist"], dtype=torch.float64)
            ),
            "global": summarise(torch.tensor(scalars["temperature.global"], dtype=torch.float64)),
        },
    }
