"""MoE, the paper's federated mixture of experts (Listo Zec et al., 2020): per client, a
specialist initialised from its fine-tuned model, the frozen global model (in eval
mode) and a fresh gate, trained on the probability mixture
``-log(g p_s + (1 - g) p_g)`` (see :mod:`fedmoe.methods.mixture`), early stopped on the
client's validation set."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from fedmoe.engine import ClientData, train
from fedmoe.engine.evaluate import Tally, batches
from fedmoe.errors import ConfigError
from fedmoe.federation import Clients
from fedmoe.methods.base import Evaluated, GateValues, Method, Output, RunSpec, global_model
from fedmoe.methods.fedavg import FedAvg
from fedmoe.methods.finetune import FineTune
from fedmoe.methods.mixture import GATE, SPECIALIST, Mixture, Pool, Schedule, combine
from fedmoe.methods.params import prefixed
from fedmoe.methods.personal import personal_model

#: What paired differences compare a mixture with: FT and Local on the clients' own
#: data, FedAvg and FT on the global test set.
SpecialistStart = Literal["finetune", "fresh"]

MIXTURE_BASELINES: dict[str, tuple[str, ...]] = {
    "local_test": (FineTune.name, "local"),
    "global_test": (FedAvg.name, FineTune.name),
}


@dataclass(frozen=True)
class MoeOptions:
    """``lr``: the mixture's learning rate (the other settings are ``[personalise]``'s);
    ``pool``: ``probability`` (the paper's mixture) or ``log-linear`` (the reference
    code's weighted sum of log-probabilities); ``train_specialist``: train specialist and
    gate (the paper) or the gate alone; ``gate_bias``: added to the fresh gate's output
    bias, so it starts at ``g = sigmoid(gate_bias)`` (0: the paper's fresh gate);
    ``schedule``: ``joint`` (the paper's) or ``staged`` (the gate alone first with both
    experts frozen, then jointly; each stage has the full epoch budget);
    ``specialist``: ``finetune`` (the paper: the client's fine-tuned model) or ``fresh``
    (a new model of ``specialist_model``, for experts of different kinds)."""

    lr: float = 1e-5
    pool: Pool = "probability"
    train_specialist: bool = True
    gate_bias: float = 0.0
    schedule: Schedule = "joint"
    specialist: SpecialistStart = "finetune"

    def validate(self, where: str) -> None:
        if self.lr <= 0:
            raise ConfigError(f"{where}.lr must be positive, got {self.lr}")


def check_specialist(where: str, start: str, config: Mapping[str, Any]) -> None:
    """A specialist of another architecture cannot start from FT's models."""
    other = config["specialist_model"] not in ("", config["model"])
    if other and start == "finetune":
        raise ConfigError(
            f"{where}.specialist = 'finetune' starts the specialist from FT's models, but "
            f"specialist_model {config['specialist_model']!r} is another architecture than "
            f"model {config['model']!r}: set {where}.specialist = 'fresh'"
        )


def train_mixture(
    run: RunSpec,
    options: MoeOptions,
    clients: Clients,
    inputs: Mapping[str, Output],
    description: str,
    source: str = FineTune.name,
) -> Output:
    """Train each client's mixture: the personal models of the method ``source`` (FT's
    by default) initialise the specialists, the gate starts fresh, the global expert is
    frozen. The output holds ``specialist.*`` and ``gate.*``."""
    gate_net, device = run.gate_net, clients.device
    gate = gate_net.init(run.seed, clients.ids, "moe/gate-init", run.dtype, device)
    gate[gate_net.output_bias] = gate[gate_net.output_bias] + options.gate_bias
    if options.specialist == "fresh":
        spec = run.specialist_net
        start = spec.init(run.seed, clients.ids, "moe/specialist-init", run.dtype, device)
    else:
        start = personal_model(inputs[source])
    specialist = prefixed(start, SPECIALIST)
    trained = prefixed(gate, GATE)
    objective = mixture_of(run, options, inputs)
    cfg = run.personalise_with(options.lr)
    staged = options.schedule == "staged" and options.train_specialist
    progress = run.progress(description, (2 if staged else 1) * cfg.epochs)
    epochs = torch.zeros(len(clients.ids), dtype=torch.int64, device=device)
    if staged:
        keys = clients.keys(run.seed, "moe/train-gate")
        first = train(
            objective, trained, clients.train, cfg, keys, clients.val, progress, specialist
        )
        trained, epochs = first.params, first.epochs
    fixed = {} if options.train_specialist else specialist
    if options.train_specialist:
        trained |= specialist
    keys = clients.keys(run.seed, "moe/train")
    res = train(objective, trained, clients.train, cfg, keys, clients.val, progress, fixed)
    return Output(res.params | fixed, epochs + res.epochs, res.best_loss)


def mixture_of(run: RunSpec, options: MoeOptions, inputs: Mapping[str, Output]) -> Mixture:
    """The mixture objective over the run's frozen global model."""
    specialist = run.specialist_net if options.specialist == "fresh" else run.net
    return Mixture(
        run.net, run.gate_net, global_model(inputs[FedAvg.name]), options.pool, specialist
    )


@torch.no_grad()
def evaluate_mixture(
    mixture: Mixture, params: dict[str, torch.Tensor], data: ClientData
) -> Evaluated:
    """Each client's mixture on ``data``: accuracy and, from the same forward passes,
    the gate's weight on the specialist per example."""
    tally = Tally.zeros(data.num_clients, data.index.device)
    parts = []
    for x, y, valid in batches(data):
        log_ps, log_pg, logit = mixture.parts(params, x, None)
        tally.add(combine(log_ps, log_pg, logit, mixture.pool), y, valid)
        parts.append((torch.sigmoid(logit), y, valid))
    g, y, valid = (torch.cat(t, 1) for t in zip(*parts, strict=True))
    return Evaluated(tally.result(data.n).accuracy, GateValues(g, y, valid))


class Moe(Method):
    name = "moe"
    label = "MoE"
    description = (
        "the paper's mixture: FT's specialist and the frozen global model, gated per input"
    )
    options = MoeOptions
    needs = (FedAvg.name, FineTune.name)
    baselines = MIXTURE_BASELINES
    contender = True

    def validate(self, options: Any, config: Mapping[str, Any]) -> None:
        check_specialist(f"method.{self.name}", options.specialist, config)

    def personalise(
        self,
        run: RunSpec,
        options: Any,
        clients: Clients,
        inputs: Mapping[str, Output],
        federated: Output | None,
    ) -> Output:
        return train_mixture(run, options, clients, inputs, "MoE epochs")

    def evaluate(
        self,
        run: RunSpec,
        options: Any,
        own: Output,
        inputs: Mapping[str, Output],
        data: ClientData,
    ) -> Evaluated:
        return evaluate_mixture(mixture_of(run, options, inputs), own.state, data)
