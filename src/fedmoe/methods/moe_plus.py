"""MoE+: the paper's mixture with a gate fitted over the frozen fine-tuned specialist
and the frozen global expert (global-expert features as gate inputs, fitted on held-out
data, calibrated experts, a label-prior offset and a Bayes-adjusted global expert: see
:mod:`fedmoe.methods.gating` and docs/moe-plus.md). With ``ablation``, every variant
with one option switched (and all switched) is fitted and reported too."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedmoe.engine import ClientData
from fedmoe.federation import Clients, State
from fedmoe.methods import fitted_gate as fg
from fedmoe.methods.base import Evaluated, Method, Output, RunSpec, global_model
from fedmoe.methods.fedavg import FedAvg
from fedmoe.methods.finetune import FineTune
from fedmoe.methods.gating import Experts, GateConfig
from fedmoe.methods.moe import MIXTURE_BASELINES
from fedmoe.methods.personal import personal_model


@dataclass(frozen=True)
class MoePlusOptions(fg.GateOptions):
    """The gate options (:class:`~fedmoe.methods.fitted_gate.GateOptions`) and
    ``ablation``: also fit and report every one-option-switched variant."""

    ablation: bool = False

    def variants(self) -> dict[str, GateConfig]:
        """The gates to fit by label, the configured one first."""
        main = self.gate()
        return main.ablations() if self.ablation else {main.label: main}


class MoePlus(Method):
    name = "moe-plus"
    label = "MoE+"
    description = "a gate fitted over the frozen FT specialist and global model"
    options = MoePlusOptions
    needs = (FedAvg.name, FineTune.name)
    baselines = MIXTURE_BASELINES
    contender = True
    #: The method whose personal models are the (frozen) specialists.
    specialist_method = FineTune.name

    def validate(self, options: Any, config: Mapping[str, Any]) -> None:
        for variant in options.variants().values():
            fg.check_heldout(f"method.{self.name}", variant, config)

    def _experts(
        self,
        run: RunSpec,
        options: Any,
        data: ClientData,
        specialists: Any,
        inputs: Mapping[str, Output],
    ) -> dict[str, Experts]:
        kinds = {v.inputs for v in options.variants().values()}
        return fg.experts_on(run, specialists, global_model(inputs[FedAvg.name]), data, None, kinds)

    def personalise(
        self,
        run: RunSpec,
        options: Any,
        clients: Clients,
        inputs: Mapping[str, Output],
        federated: Output | None,
    ) -> Output:
        specialists = personal_model(inputs[self.specialist_method])
        train = self._experts(run, options, clients.train, specialists, inputs)
        val = self._experts(run, options, clients.val, specialists, inputs)
        state: State = {}
        main = None
        for j, (label, config) in enumerate(options.variants().items()):
            fit = fg.fit(
                run,
                config,
                options.lr,
                clients,
                train[config.inputs],
                val[config.inputs],
                f"{self.name} ({label}) epochs",
            )
            state |= fg.gate_state(fit, f"v{j}")
            if j == 0:
                main = fit
                state |= fg.client_state(fit)
        assert main is not None
        return Output(state, main.epochs, main.best_loss)

    def evaluate(
        self,
        run: RunSpec,
        options: Any,
        own: Output,
        inputs: Mapping[str, Output],
        data: ClientData,
    ) -> Evaluated:
        specialists = personal_model(inputs[self.specialist_method])
        experts = self._experts(run, options, data, specialists, inputs)
        results = {
            label: fg.evaluated(
                fg.restored(run, own.state, f"v{j}", config), experts[config.inputs]
            )
            for j, (label, config) in enumerate(options.variants().items())
        }
        main = next(iter(results.values()))
        return Evaluated(
            main.accuracy, main.gate, results if options.ablation else {}, main.scalars
        )

    def details(
        self, options: Any, scalars: Mapping[str, list[float]], variant: str | None = None
    ) -> dict[str, Any]:
        if variant is None:
            return {}
        return fg.variant_details(options.variants()[variant], scalars)
