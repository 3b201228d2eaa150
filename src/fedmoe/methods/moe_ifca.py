"""MoE+ IFCA: the MoE+ gate (its options as ``moe-plus``'s) over the client's
fine-tuned specialist, the global model and IFCA's cluster models, one softmax weight
per expert (see :mod:`fedmoe.methods.gating`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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


class MoeIfca(Method):
    name = "moe-ifca"
    label = "MoE+ IFCA"
    description = "the MoE+ gate over the specialist, the global model and the cluster models"
    options = fg.GateOptions
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
        return experts[options.inputs]

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
