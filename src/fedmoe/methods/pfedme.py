"""pFedMe (T. Dinh, Tran and Nguyen, "Personalized Federated Learning with Moreau
Envelopes", NeurIPS 2020), Algorithm 1.

Each sampled client starts from the received global model: its local copy ``w_i = w``
and its personal model ``theta = w``. For every batch ``D`` of its local epochs (the
paper's local rounds ``R``), it

1. approximately solves ``theta = argmin f(theta; D) + (lam / 2) ||theta - w_i||^2``
   with ``steps`` (the paper's ``K``) gradient steps of size ``personal_lr`` on that
   batch, ``theta <- theta - personal_lr (grad f(theta; D) + lam (theta - w_i))``,
   starting from the previous batch's ``theta`` (``theta`` persists within a round, as in
   the authors' code), and then
2. moves its local copy towards it: ``w_i <- w_i - eta lam (w_i - theta)``,
   ``eta`` being ``federated.lr``.

The server takes ``w <- (1 - beta) w + beta * (sample-weighted mean of the w_i)``. Each
client sends ``(1 - beta) w + beta w_i`` (``w`` being what it received), so the server's
sample-weighted mean of what arrives *is* that update (the weights sum to one) and the
server needs no option of the method. ``beta = 1`` sends ``w_i`` as it is. (PFLlib's
default ``beta = 0`` would freeze the server; it is rejected here.)

The steps are the paper's explicit updates (the engine's ``own_step``):
``federated.optimizer``, ``momentum`` and ``weight_decay`` do not apply, and neither
does the authors' code's extra ``mu * theta`` term (weight decay 1e-3), which the paper
does not have. ``federated.local_epochs`` and ``batch_size`` do.

Shared: the global model ``w``. Kept on each client across rounds (its state): its
personal model ``theta`` from its last participation (FL-bench never updates its
personal parameters; here ``theta`` is what the client's last round computed) and the
number of rounds it trained. pFedMe predicts with ``theta``; early stopping scores each
opt-in client's ``theta`` (the global model for a client that has not trained yet, from
which its ``theta`` will start after federation), and the best round keeps its global
model and its clients' ``theta``.

Opt-out clients (which never train or send anything) and any client never sampled up to
the best round: after federation each computes its personal model of the final (best)
global model ``w``, ``theta(w) = argmin f(theta) + (lam / 2) ||theta - w||^2`` over its
data, with the same inner solver (``steps`` steps of ``personal_lr`` per batch, ``w``
fixed, ``theta`` starting at ``w``) for up to ``personalise.epochs`` epochs of
``personalise.batch_size`` batches, early stopped on its validation loss
(``personalise.optimizer`` and ``lr`` do not apply).

Options (the paper's defaults): ``lam`` (> 0) 15, ``steps`` (>= 1) 5, ``personal_lr``
(> 0) 0.01 and ``beta`` (> 0) 1 (the paper uses 1 and 2; the authors' published runs 1).
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
    TrainConfig,
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
from fedmoe.methods.personal import MODEL, evaluate_personal, train_unfederated
from fedmoe.models import Model, Params

#: The prefix of a client's personal model ``theta`` (state and trained dicts).
PERSONAL = "personal"
#: The rounds each client trained (int64 ``(K,)``), in its state and the output.
ROUNDS = "rounds"


@dataclass(frozen=True)
class PFedMeOptions:
    """``lam``: the Moreau envelope's weight; ``steps``: inner steps per batch (``K``);
    ``personal_lr``: their step size; ``beta``: the server's step towards the mean."""

    lam: float = 15.0
    steps: int = 5
    personal_lr: float = 0.01
    beta: float = 1.0

    def validate(self, where: str) -> None:
        if not (math.isfinite(self.lam) and self.lam > 0):
            raise ConfigError(f"{where}.lam must be a positive number, got {self.lam}")
        if self.steps < 1:
            raise ConfigError(f"{where}.steps must be at least 1, got {self.steps}")
        if not (math.isfinite(self.personal_lr) and self.personal_lr > 0):
            raise ConfigError(
                f"{where}.personal_lr must be a positive number, got {self.personal_lr}"
            )
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ConfigError(
                f"{where}.beta must be a positive number (0 freezes the server), got {self.beta}"
            )


def _where(active: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(active.view(-1, *[1] * (old.dim() - 1)), new, old)


@dataclass(frozen=True)
class MoreauEnvelope:
    """pFedMe's local steps (see the module docstring). The parameters it sees:
    ``theta`` (``personal.*``, always trained) and ``w_i`` (``global.*``): trained (it
    moves towards ``theta`` after each batch, step ``eta``) or fixed (it stays). Its
    log-probabilities are ``theta``'s, the model pFedMe predicts with."""

    net: Model
    lam: float
    steps: int
    personal_lr: float
    eta: float

    def log_probs(self, params: Params, x: torch.Tensor, dropout: Dropout | None) -> torch.Tensor:
        return Classifier(self.net).log_probs(unprefixed(params, PERSONAL), x, dropout)

    def own_step(
        self,
        params: Params,
        fixed: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        valid: torch.Tensor,
        dropout: Dropout | None,
    ) -> None:
        theta = unprefixed(params, PERSONAL)
        local = unprefixed(params | fixed, GLOBAL)
        active = valid.any(1)
        names = list(theta)
        dtype = theta[names[0]].dtype
        # One dropout draw for the batch: the inner problem is one function of theta.
        mask = None if dropout is None else dropout.mask(self.net, x.shape[1], dtype)
        for _ in range(self.steps):
            with torch.enable_grad():
                loss = mean_nll(self.net.forward(theta, x, mask), y, valid)
                grads = torch.autograd.grad(loss.sum(), [theta[n] for n in names])
            with torch.no_grad():
                for n, g in zip(names, grads, strict=True):
                    p = theta[n]
                    grad = g + self.lam * (p - local[n])
                    p.copy_(_where(active, p - self.personal_lr * grad, p))
        if any(n.startswith(GLOBAL + ".") for n in params):
            with torch.no_grad():
                for n, w in local.items():
                    w.copy_(_where(active, w - self.eta * self.lam * (w - theta[n]), w))


def _stateless(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with plain SGD: the engine's optimiser is never used (the objective takes
    its own steps), and SGD without momentum keeps no state."""
    return replace(cfg, optimizer=OptimizerConfig("sgd", cfg.optimizer.lr))


class PFedMeRounds(FedAvgRounds):
    """pFedMe's hooks (see the module docstring)."""

    def init_client_state(self, run: RunSpec, options: Any, clients: Clients) -> State:
        k, device = len(clients.ids), clients.device
        start = self.init(run, options, device)
        personal = {n: p.clone() for n, p in broadcast(start, k).items()}
        rounds = torch.zeros(k, dtype=torch.int64, device=device)
        return prefixed(personal, PERSONAL) | {ROUNDS: rounds}

    def client_update(
        self,
        run: RunSpec,
        options: Any,
        server: Params,
        clients: Clients,
        round_: int,
        state: State,
    ) -> Update:
        received = broadcast(server, len(clients.ids))
        local = run.federation.local
        objective = MoreauEnvelope(
            run.net, options.lam, options.steps, options.personal_lr, local.optimizer.lr
        )
        start = prefixed(received, GLOBAL) | prefixed(received, PERSONAL)
        keys = clients.keys(run.seed, f"pfedme/round/{round_}")
        res = train(objective, start, clients.train, _stateless(local), keys)
        beta = options.beta
        sent = {
            n: w if beta == 1.0 else (1 - beta) * received[n] + beta * w
            for n, w in unprefixed(res.params, GLOBAL).items()
        }
        theta = unprefixed(res.params, PERSONAL)
        return Update(sent, state=prefixed(theta, PERSONAL) | {ROUNDS: state[ROUNDS] + 1})

    def validate(
        self, run: RunSpec, options: Any, server: Params, clients: Clients, state: State
    ) -> Evaluation:
        trained = state[ROUNDS] > 0
        theta = {
            n: _where(trained, p, server[n].expand_as(p))
            for n, p in unprefixed(state, PERSONAL).items()
        }
        return evaluate(Classifier(run.net), theta, clients.val)


class PFedMe(Method):
    name = "pfedme"
    label = "pFedMe"
    description = "a personal model per client tied to the global model by a Moreau envelope"
    options = PFedMeOptions
    federated = PFedMeRounds()

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
        rounds = state[ROUNDS]

        def fit(them: Clients, _: torch.Tensor) -> TrainResult:
            start = broadcast(server, len(them.ids))
            objective = MoreauEnvelope(
                run.net, options.lam, options.steps, options.personal_lr, 0.0
            )
            res = train(
                objective,
                prefixed(start, PERSONAL),
                them.train,
                _stateless(run.personalise),
                them.keys(run.seed, "pfedme/personalise"),
                them.val,
                run.progress("pFedMe personal models", run.personalise.epochs),
                prefixed(start, GLOBAL),
            )
            return replace(res, params=unprefixed(res.params, PERSONAL))

        res = train_unfederated(rounds, clients, unprefixed(state, PERSONAL), fit)
        own = prefixed(server, GLOBAL) | prefixed(res.params, MODEL) | {ROUNDS: rounds}
        return Output(own, res.epochs, res.best_loss, federated.info)

    def evaluate(
        self,
        run: RunSpec,
        options: Any,
        own: Output,
        inputs: Mapping[str, Output],
        data: ClientData,
    ) -> Evaluated:
        ev = evaluate_personal(run, own, data)
        return Evaluated(ev.accuracy, scalars={ROUNDS: own.state[ROUNDS]})

    def details(
        self, options: Any, scalars: Mapping[str, list[float]], variant: str | None = None
    ) -> dict[str, Any]:
        rounds = [int(r) for r in scalars[ROUNDS]]
        return {
            "lam": options.lam,
            "beta": options.beta,
            "rounds_trained": rounds,
            "personalised_after_federation": [c for c, r in enumerate(rounds) if r == 0],
        }
