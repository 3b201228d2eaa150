"""MoE+ IFCA: the MoE+ gate (its options as ``moe-plus``'s) over the client's
fine-tuned specialist, the global model and IFCA's cluster models, one softmax weight
per expert (see :mod:`fedmoe.methods.gating`).

``clusters = "routed"`` replaces the cluster models by one expert, IFCA's routed mixture
(``method.ifca.router`` other than ``"none"``, see :mod:`fedmoe.methods.ifca`): its federated router
picks the cluster model per input, so the expert also serves inputs unlike the client's
own, which a gate fitted on the client's data alone cannot route."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fedmoe.engine import ClientData
from fedmoe.errors import ConfigError
from fedmoe.federation import Clients
from fedmoe.methods import fitted_gate as fg
from fedmoe.methods.base import Evaluated, Method, Output, RunSpec, global_model
from fedmoe.methods.fedavg import FedAvg
from fedmoe.methods.finetune import FineTune
from fedmoe.methods.gating import Experts
from fedmoe.methods.ifca import Ifca, cluster_experts
from fedmoe.methods.moe import MIXTURE_BASELINES
from fedmoe.methods.personal import personal_model

GATE = "gate"


@dataclass(frozen=True)
class MoeIfcaOptions(fg.GateOptions):
    """The gate's options (:class:`fedmoe.methods.fitted_gate.GateOptions`) and
    ``clusters``: IFCA's cluster models as experts (``"each"``) or its routed mixture as
    one (``"routed"``)."""

    clusters: Literal["each", "routed"] = "each"


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
        router = config.get("method", {}).get(Ifca.name, {}).get("router", "none")
        if options.clusters == "routed" and router == "none":
            raise ConfigError(
                f"method.{self.name}.clusters = 'routed' mixes IFCA's routed mixture and "
                f"needs method.{Ifca.name}.router = 'choice' or 'likelihood'"
            )

    def _experts(
        self, run: RunSpec, options: Any, data: ClientData, inputs: Mapping[str, Output]
    ) -> Experts:
        experts = fg.experts_on(
            run,
            personal_model(inputs[FineTune.name]),
            global_model(inputs[FedAvg.name]),
            data,
            cluster_experts(run, global_model(inputs[Ifca.name]), options.clusters == "routed"),
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
