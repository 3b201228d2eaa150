"""Per-FedAvg, first order (Fallah, Mokhtari and Ozdaglar, "Personalized Federated
Learning with Theoretical Guarantees: A Model-Agnostic Meta-Learning Approach",
NeurIPS 2020: Per-FedAvg (FO), their Algorithm 1 with the Hessian term dropped).

The federation learns a global model ``w`` that is good *after one local gradient step*.
Each local step of a sampled client takes two batches ``D`` and ``D'`` and

    temp = w - alpha * grad f(w; D)          (the adaptation step)
    w   <- w - beta * grad f(temp; D')       (the gradient at the adapted point, applied
                                              to the original weights: first order)

both plain SGD steps, as in the paper. The engine draws batches of ``2B`` examples
(``B`` = ``federated.batch_size``); the first ``B`` are ``D``, the rest ``D'`` (PFLlib's
split). An epoch is thus ``ceil(n / 2B)`` steps and uses each example once, in ``D`` or
in ``D'``; a step whose ``D'`` is empty (a short last batch) leaves ``w`` unchanged.
``federated.local_epochs`` and ``batch_size`` apply; ``federated.optimizer``,
``momentum`` and ``weight_decay`` do not (both steps are the paper's SGD steps).

Shared: the whole model, aggregated as FedAvg does (sample-weighted mean). Kept per
client across rounds: nothing.

Personalisation, of every client, opt-out ones included (they sent nothing; they adapt
the global model the federation produced to their own data like everyone else): one
gradient step of size ``alpha`` from the best global model on the mean loss over the
client's *whole* training set, in eval mode (no dropout). The paper evaluates after one
step of stochastic gradient descent on a batch; the whole training set gives that step's
lowest-variance version and needs no random draw. Early stopping scores the same thing:
each opt-in client's adapted global model on its validation set
(:meth:`~fedmoe.methods.base.Federated.validate`).

Defaults: ``alpha`` = ``federated.lr`` (the local learning rate, as PFL-METHODS.md and
PFLlib have it; PFLlib also uses it for ``beta``), ``beta`` = 1e-3 (the value public
implementations take from the paper: TorchFed's ``perfedavg_beta``,
KarhouTam/Per-FedAvg).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from fedmoe.engine import (
    Classifier,
    ClientData,
    Dropout,
    Evaluation,
    OptimizerConfig,
    evaluate,
    mean_nll,
    train,
)
from fedmoe.engine.evaluate import batches, nll
from fedmoe.errors import ConfigError
from fedmoe.federation import Clients, State, Update
from fedmoe.methods.base import Evaluated, Federated, Method, Output, RunSpec, global_model
from fedmoe.methods.params import broadcast, prefixed, rows
from fedmoe.methods.personal import MODEL, evaluate_personal
from fedmoe.models import Model, Params


@dataclass(frozen=True)
class PerFedAvgOptions:
    """``alpha``: the adaptation step size (0: ``federated.lr``); ``beta``: the meta
    step size."""

    alpha: float = 0.0
    beta: float = 1e-3

    def validate(self, where: str) -> None:
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise ConfigError(f"{where}.alpha must be >= 0 (0: federated.lr), got {self.alpha}")
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ConfigError(f"{where}.beta must be positive, got {self.beta}")

    def step(self, run: RunSpec) -> float:
        """The adaptation step size ``alpha`` of ``run``."""
        return self.alpha or run.federation.local.optimizer.lr


@dataclass(frozen=True)
class FirstOrderMaml:
    """Per-FedAvg (FO)'s local objective on batches of ``2 * half`` examples: the first
    ``half`` are ``D``, the rest ``D'``. ``client_loss`` is ``f(temp; D')`` with
    ``temp = w - alpha * g`` and ``g = grad f(w; D)`` held constant, so its gradient in
    ``w`` is ``grad f(temp; D')``, the first-order meta-gradient. Evaluation scores the
    model itself."""

    net: Model
    alpha: float
    half: int

    def log_probs(self, params: Params, x: torch.Tensor, dropout: Dropout | None) -> torch.Tensor:
        return Classifier(self.net).log_probs(params, x, dropout)

    def client_loss(
        self,
        params: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        valid: torch.Tensor,
        dropout: Dropout | None,
    ) -> torch.Tensor:
        b, dtype = self.half, next(iter(params.values())).dtype
        x1, x2 = x[:, :b], x[:, b:]
        m1 = None if dropout is None else dropout.mask(self.net, x1.shape[1], dtype, slot=0)
        m2 = None if dropout is None else dropout.mask(self.net, x2.shape[1], dtype, slot=1)
        inner = mean_nll(self.net.forward(params, x1, m1), y[:, :b], valid[:, :b])
        names = list(params)
        grads = torch.autograd.grad(inner.sum(), [params[n] for n in names])
        temp = {n: params[n] - self.alpha * g for n, g in zip(names, grads, strict=True)}
        return mean_nll(self.net.forward(temp, x2, m2), y[:, b:], valid[:, b:])


def adapted(net: Model, params: Params, data: ClientData, alpha: float, cohort: int) -> Params:
    """Each client's model after one gradient step of size ``alpha`` on its mean NLL over
    all its examples in ``data`` (eval mode): ``w - alpha * grad``. ``params``: one row
    per client, or one row every client starts from; returns one row per client. A
    client without examples keeps ``w``. Clients go ``cohort`` at a time."""
    k = data.num_clients
    shared = next(iter(params.values())).shape[0] == 1
    device = data.index.device
    parts = []
    for start in range(0, k, cohort):
        idx = torch.arange(start, min(start + cohort, k), device=device)
        part = data.select(idx)
        mine = broadcast(params, len(idx)) if shared else rows(params, idx)
        live = {n: p.detach().clone().requires_grad_(True) for n, p in mine.items()}
        total = {n: torch.zeros_like(p) for n, p in live.items()}
        count = part.n.clamp(min=1).to(next(iter(live.values())).dtype)
        with torch.enable_grad():
            for x, y, valid in batches(part):
                losses = torch.where(valid, nll(net.forward(live, x), y), 0.0).sum(1)
                grads = torch.autograd.grad((losses / count).sum(), list(live.values()))
                for n, g in zip(live, grads, strict=True):
                    total[n] += g
        parts.append({n: (p - alpha * total[n]).detach() for n, p in live.items()})
    return {n: torch.cat([p[n] for p in parts]) for n in params}


class PerFedAvgRounds(Federated):
    """Per-FedAvg's hooks: FedAvg's rounds with the first-order MAML local steps."""

    def init(self, run: RunSpec, options: Any, device: torch.device) -> Params:
        return run.net.init(run.seed, torch.tensor([0]), "per-fedavg/init", run.dtype, device)

    def client_update(
        self,
        run: RunSpec,
        options: Any,
        server: Params,
        clients: Clients,
        round_: int,
        state: State,
    ) -> Update:
        local = run.federation.local
        cfg = replace(
            local, batch_size=2 * local.batch_size, optimizer=OptimizerConfig("sgd", options.beta)
        )
        objective = FirstOrderMaml(run.net, options.step(run), local.batch_size)
        keys = clients.keys(run.seed, f"per-fedavg/round/{round_}")
        start = broadcast(server, len(clients.ids))
        return Update(train(objective, start, clients.train, cfg, keys).params)

    def validate(
        self, run: RunSpec, options: Any, server: Params, clients: Clients, state: State
    ) -> Evaluation:
        """Each client's adapted global model on its validation set."""
        del state
        cohort = run.personalise.max_cohort
        model = adapted(run.net, server, clients.train, options.step(run), cohort)
        return evaluate(Classifier(run.net), model, clients.val)


class PerFedAvg(Method):
    name = "per-fedavg"
    label = "Per-FedAvg"
    description = "a global model meta-learned to adapt in one step, adapted by each client"
    options = PerFedAvgOptions
    federated = PerFedAvgRounds()

    def personalise(
        self,
        run: RunSpec,
        options: Any,
        clients: Clients,
        inputs: Mapping[str, Output],
        federated: Output | None,
    ) -> Output:
        assert federated is not None
        cohort = run.personalise.max_cohort
        model = adapted(run.net, global_model(federated), clients.train, options.step(run), cohort)
        return Output(prefixed(model, MODEL), info=federated.info)

    def evaluate(
        self,
        run: RunSpec,
        options: Any,
        own: Output,
        inputs: Mapping[str, Output],
        data: ClientData,
    ) -> Evaluated:
        return evaluate_personal(run, own, data)
