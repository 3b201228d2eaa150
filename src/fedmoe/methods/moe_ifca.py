"""MoE+ IFCA: the MoE+ gate (its options as ``moe-plus``'s) over the client's
fine-tuned specialist, the global model and IFCA's cluster models, one softmax weight
per expert (see :mod:`fedmoe.methods.gating`); or, with ``clusters = "confident"``,
the cluster models as one expert that predicts each input with the cluster model most
confident in its top class."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from fedmoe.engine import ClientData
from fedmoe.federation import Clients
from fedmoe.methods import fitted_gate as fg
from fedmoe.methods.base import Evaluated, Method, Output, RunSpec, global_model
from fedmoe.methods.fedavg import FedAvg
from fedmoe.methods.finetune import FineTune
from fedmoe.methods.gating import Experts
from fedmoe.methods.ifca import Ifca
from fedmoe.methods.moe import MIXTURE_BASELINES
from fedmoe.methods.personal import personal_model

GATE = "gate"

Clusters = Literal["each", "confident"]


@dataclass(frozen=True)
class MoeIfcaOptions(fg.GateOptions):
    """The MoE+ gate's options and how it sees the ``clusters``: ``"each"``, a gate
    weight per cluster model; ``"confident"``, one weight for the cluster model most
    confident in its top class on each input. The gate is fitted on the client's own
    inputs, where its own cluster model is right, so it cannot learn to hand an input
    from another group's distribution (another rotation, say) to that group's cluster
    model; ``"confident"`` does so by construction."""

    clusters: Clusters = "each"


def most_confident(experts: Experts) -> Experts:
    """``experts`` with its cluster models merged into one: per input, the log-
    probabilities of the cluster model whose top class is the most probable."""
    log_pc = experts.log_pc
    assert log_pc is not None
    pick = log_pc.amax(-1).argmax(-1)  # (K|1, N)
    index = pick[..., None, None].expand(*pick.shape, 1, log_pc.shape[-1])
    return replace(experts, log_pc=torch.gather(log_pc, 2, index))


class MoeIfca(Method):
    name = "moe-ifca"
    label = "MoE+ IFCA"
    description = "the MoE+ gate over the specialist, the global model and the cluster models"
    options = MoeIfcaOptions
    needs = (FedAvg.name, FineTune.name, Ifca.name)
    baselines = MIXTURE_BASELINES
    contender = True

    def validate(self, options: Any, config: Mapping[str, Any]) -> None:
        fg.check_heldout(f"method.{self.name}", options.gate(), config)

    def _experts(
        self, run: RunSpec, options: Any, data: ClientData, inputs: Mapping[str, Output]
    ) -> Experts:
        experts = fg.experts_on(
            run,
            personal_model(inputs[FineTune.name]),
            global_model(inputs[FedAvg.name]),
            data,
            global_model(inputs[Ifca.name]),
            {options.inputs},
        )
        chosen = experts[options.inputs]
        return most_confident(chosen) if options.clusters == "confident" else chosen

    def personalise(
        self,
        run: RunSpec,
        options: Any,
        clients: Clients,
        inputs: Mapping[str, Output],
        federated: Output | None,
    ) -> Output:
        config = options.gate()
        train = self._experts(run, options, clients.train, inputs)
        val = self._experts(run, options, clients.val, inputs)
        fit = fg.fit(run, config, options.lr, clients, train, val, f"{self.name} epochs")
        return Output(fg.gate_state(fit, GATE) | fg.client_state(fit), fit.epochs, fit.best_loss)

    def evaluate(
        self,
        run: RunSpec,
        options: Any,
        own: Output,
        inputs: Mapping[str, Output],
        data: ClientData,
    ) -> Evaluated:
        experts = self._experts(run, options, data, inputs)
        fit = fg.restored(run, own.state, GATE, options.gate(), experts.num_clusters)
        result = fg.evaluated(fit, experts)
        return Evaluated(result.accuracy, result.gate)
