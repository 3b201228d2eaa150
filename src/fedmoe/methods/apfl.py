"""APFL (Deng, Kamani and Mahdavi, "Adaptive Personalized Federated Learning", 2020),
Algorithm 1 (local descent APFL) with the adaptive mixing weight of its Section 3.

What is shared: the global model ``w``, trained exactly as FedAvg's (each sampled client
trains the received ``w`` on its mean NLL with the shared federated settings; the
sample-weighted mean of the updates). Batches and dropout of ``w`` come from FedAvg's
per-client streams, so APFL's and FedAvg's global models follow the same draws.

What is kept on each client (its state, across rounds): its local model ``v``
(initialised to the global model's initial parameters), its mixing weight ``alpha`` in
[0, 1] and the number of rounds it trained. Each local step of a sampled client on a
batch ``xi`` updates, all from the values *before* the step (the paper's
``w^(t-1), v^(t-1)``: ``vbar^(t-1)`` mixes the ``w`` from before this step)::

    vbar  = alpha v + (1 - alpha) w                                  (parameters)
    w     <- w - lr grad f(w; xi)
    v     <- v - lr grad_v f(vbar; xi)          = v - lr alpha grad f(vbar; xi)
    alpha <- P_[0,1](alpha - lr_alpha <v - w, grad f(vbar; xi)>)     (if adaptive)

``w`` gets no gradient from the mixture's term. The paper's steps are SGD; here ``w``
and ``v`` step with the shared federated optimiser (SGD reproduces the paper; Adam
keeps ``w`` equal to FedAvg's) and ``alpha`` always with plain SGD at ``alpha_lr``,
projected onto [0, 1] after each step. ``v`` is never replaced by the mixture (PFLlib's
bug) and ``w`` steps once per batch with its own fresh gradient (FL-bench re-steps it
with a stale one).

APFL predicts with the mixture ``alpha v + (1 - alpha) w`` of the client's ``v``,
``alpha`` and the global ``w``; early stopping scores that mixture on validation with
the current global model (a client that has not trained yet is scored with the global
model, which is what its mixture starts from after federation), and the best round
keeps its global model and its clients' ``v`` and ``alpha``.

Opt-out clients (which never train or send anything) and any client never sampled up to
the best round: after federation each trains its ``v`` and ``alpha`` with ``w`` frozen at
the final (best) global model, from ``v = w`` and ``alpha`` = the initial weight, on the
loss of the mixture alone (the same updates of ``v`` and ``alpha``), with the shared
personalisation settings (``[personalise]``; ``alpha_lr`` 0 means ``personalise.lr``
there), early stopped on the mixture's validation loss.

Options: ``alpha`` (in [0, 1]), default 0.5: the initial mixing weight, the authors'
code's default (FedTorch ``--fed_personal_alpha``); ``adaptive`` (default true: the
paper's adaptive APFL; false keeps ``alpha`` fixed); ``alpha_lr`` (>= 0), default 0:
the step size of ``alpha``, 0 meaning the phase's learning rate (``federated.lr``, the
paper's single ``eta_t`` for all three updates). With Adam's small learning rates set
``alpha_lr`` explicitly, or ``alpha`` barely moves.
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
    TrainResult,
    evaluate,
    mean_nll,
    train,
)
from fedmoe.errors import ConfigError
from fedmoe.federation import Clients, State, Update
from fedmoe.methods.base import (
    GLOBAL,
    Evaluated,
    Method,
    Output,
    RunSpec,
    client_state,
    global_model,
)
from fedmoe.methods.fedavg import FedAvgRounds
from fedmoe.methods.params import broadcast, prefixed, unprefixed
from fedmoe.methods.personal import train_unfederated
from fedmoe.models import Model, Params

#: The prefix of a client's local model ``v`` (state, output and trained dicts).
PERSONAL = "personal"
#: Each client's mixing weight ``alpha`` ``(K,)``.
ALPHA = "alpha"
#: The rounds each client trained (int64 ``(K,)``).
ROUNDS = "rounds"


@dataclass(frozen=True)
class ApflOptions:
    """``alpha``: the initial mixing weight in [0, 1]; ``adaptive``: learn ``alpha``;
    ``alpha_lr``: its step size (0: the phase's learning rate)."""

    alpha: float = 0.5
    adaptive: bool = True
    alpha_lr: float = 0.0

    def validate(self, where: str) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"{where}.alpha must be in [0, 1], got {self.alpha}")
        if not (math.isfinite(self.alpha_lr) and self.alpha_lr >= 0):
            raise ConfigError(
                f"{where}.alpha_lr must be a finite number >= 0 (0: the learning rate), "
                f"got {self.alpha_lr}"
            )


def mixed(alpha: torch.Tensor, personal: Params, server: Params) -> Params:
    """``alpha v + (1 - alpha) w`` per client: ``alpha`` ``(K,)``, ``personal`` ``v``
    stacked ``(K, ...)``, ``server`` ``w`` stacked ``(K, ...)`` or one row ``(1, ...)``."""
    out = {}
    for n, v in personal.items():
        a = alpha.view(-1, *[1] * (v.dim() - 1))
        out[n] = a * v + (1 - a) * server[n]
    return out


@dataclass(frozen=True)
class Mixture:
    """APFL's objective. The parameters it sees: ``v`` (``personal.*``), ``alpha`` and
    ``w`` (``global.*``), each trained or fixed. Its log-probabilities are the mixed
    model's (what validation scores); its training loss per client is ``f(vbar)``, with
    ``w`` detached in ``vbar``, plus ``f(w)`` when ``trains_global``. ``alpha`` steps
    with plain SGD at ``alpha_lr`` (0: the training's learning rate), projected onto
    [0, 1] after each step. Dropout: slot 0 for ``w`` (FedAvg's draw), slot 1 for the
    mixture."""

    net: Model
    trains_global: bool
    alpha_lr: float = 0.0

    def _mixture(self, params: Params, detach_global: bool) -> Params:
        w = unprefixed(params, GLOBAL)
        if detach_global:
            w = {n: p.detach() for n, p in w.items()}
        return mixed(params[ALPHA], unprefixed(params, PERSONAL), w)

    def log_probs(self, params: Params, x: torch.Tensor, dropout: Dropout | None) -> torch.Tensor:
        mix = self._mixture(params, detach_global=True)
        dtype = next(iter(mix.values())).dtype
        mask = None if dropout is None else dropout.mask(self.net, x.shape[1], dtype, slot=1)
        return self.net.forward(mix, x, mask)

    def client_loss(
        self,
        params: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        valid: torch.Tensor,
        dropout: Dropout | None,
    ) -> torch.Tensor:
        loss = mean_nll(self.log_probs(params, x, dropout), y, valid)
        if self.trains_global:
            loss = loss + mean_nll(
                Classifier(self.net).log_probs(unprefixed(params, GLOBAL), x, dropout), y, valid
            )
        return loss

    def optimizers(self, default: OptimizerConfig) -> Mapping[str, OptimizerConfig]:
        return {ALPHA: OptimizerConfig("sgd", self.alpha_lr or default.lr)}

    def after_step(self, params: Params, active: torch.Tensor) -> None:
        if ALPHA in params:
            alpha = params[ALPHA]
            alpha.copy_(torch.where(active, alpha.clamp(0.0, 1.0), alpha))


def _split(alpha: torch.Tensor, adaptive: bool) -> tuple[Params, Params]:
    """``alpha`` as trained (adaptive) or fixed parameters: ``(trained, fixed)``."""
    return ({ALPHA: alpha}, {}) if adaptive else ({}, {ALPHA: alpha})


def _predicting(alpha: torch.Tensor, rounds: torch.Tensor) -> torch.Tensor:
    """Each client's weight on ``v`` in what it predicts with now: ``alpha`` where it
    trained, else 0 (the global model, its mixture's start after federation)."""
    return torch.where(rounds > 0, alpha, torch.zeros_like(alpha))


class ApflRounds(FedAvgRounds):
    """FedAvg's global rounds with each sampled client's ``v`` and ``alpha`` trained
    alongside ``w`` (see the module docstring)."""

    def init_client_state(self, run: RunSpec, options: Any, clients: Clients) -> State:
        k, device = len(clients.ids), clients.device
        start = self.init(run, options, device)
        personal = {n: p.clone() for n, p in broadcast(start, k).items()}
        alpha = torch.full((k,), options.alpha, dtype=run.dtype, device=device)
        rounds = torch.zeros(k, dtype=torch.int64, device=device)
        return prefixed(personal, PERSONAL) | {ALPHA: alpha, ROUNDS: rounds}

    def client_update(
        self,
        run: RunSpec,
        options: Any,
        server: Params,
        clients: Clients,
        round_: int,
        state: State,
    ) -> Update:
        trained, fixed = _split(state[ALPHA], options.adaptive)
        received = broadcast(server, len(clients.ids))
        trained |= prefixed(received, GLOBAL) | prefixed(unprefixed(state, PERSONAL), PERSONAL)
        # FedAvg's streams: w sees FedAvg's batches and dropout (slot 0).
        keys = clients.keys(run.seed, f"fedavg/round/{round_}")
        objective = Mixture(run.net, True, options.alpha_lr)
        res = train(objective, trained, clients.train, run.federation.local, keys, fixed=fixed)
        alpha = res.params.get(ALPHA, state[ALPHA])
        new_state = prefixed(unprefixed(res.params, PERSONAL), PERSONAL) | {
            ALPHA: alpha,
            ROUNDS: state[ROUNDS] + 1,
        }
        return Update(unprefixed(res.params, GLOBAL), state=new_state)

    def validate(
        self, run: RunSpec, options: Any, server: Params, clients: Clients, state: State
    ) -> Evaluation:
        alpha = _predicting(state[ALPHA], state[ROUNDS])
        models = mixed(alpha, unprefixed(state, PERSONAL), server)
        return evaluate(Classifier(run.net), models, clients.val)


class Apfl(Method):
    name = "apfl"
    label = "APFL"
    description = "a local model mixed with the FedAvg global model by a learned weight (APFL)"
    options = ApflOptions
    federated = ApflRounds()

    def personalise(
        self,
        run: RunSpec,
        options: Any,
        clients: Clients,
        inputs: Mapping[str, Output],
        federated: Output | None,
    ) -> Output:
        assert federated is not None
        server, state = global_model(federated), client_state(federated)
        rounds, alpha = state[ROUNDS], state[ALPHA]

        def fit(them: Clients, _: torch.Tensor) -> TrainResult:
            start = broadcast(server, len(them.ids))
            initial = torch.full(
                (len(them.ids),), options.alpha, dtype=alpha.dtype, device=alpha.device
            )
            trained, fixed = _split(initial, options.adaptive)
            res = train(
                Mixture(run.net, False, options.alpha_lr),
                trained | prefixed(start, PERSONAL),
                them.train,
                run.personalise,
                them.keys(run.seed, "apfl/personalise"),
                them.val,
                run.progress("APFL local models", run.personalise.epochs),
                fixed | prefixed(start, GLOBAL),
            )
            return replace(res, params={ALPHA: initial} | res.params)

        kept = {n: p for n, p in state.items() if n.startswith(f"{PERSONAL}.")}
        res = train_unfederated(rounds, clients, kept | {ALPHA: alpha}, fit)
        own = prefixed(server, GLOBAL) | res.params | {ROUNDS: rounds}
        return Output(own, res.epochs, res.best_loss, federated.info)

    def evaluate(
        self,
        run: RunSpec,
        options: Any,
        own: Output,
        inputs: Mapping[str, Output],
        data: ClientData,
    ) -> Evaluated:
        state = own.state
        models = mixed(state[ALPHA], unprefixed(state, PERSONAL), global_model(own))
        accuracy = evaluate(Classifier(run.net), models, data).accuracy
        return Evaluated(accuracy, scalars={ALPHA: state[ALPHA], ROUNDS: state[ROUNDS]})

    def details(
        self, options: Any, scalars: Mapping[str, list[float]], variant: str | None = None
    ) -> dict[str, Any]:
        rounds = [int(r) for r in scalars[ROUNDS]]
        return {
            "adaptive": options.adaptive,
            "alpha": [float(a) for a in scalars[ALPHA]],
            "rounds_trained": rounds,
            "personalised_after_federation": [c for c, r in enumerate(rounds) if r == 0],
        }
