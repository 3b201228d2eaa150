"""IFCA (Ghosh et al., 2020): several global models federated with the shared
federated settings. In each round every sampled client trains the model with the
lowest loss on its training data, and each model becomes the sample-weighted mean of
the updates of the clients that chose it (a model no one chose is kept); a client's
validation score is that of its best model. Each client is then evaluated with its
model of lowest validation loss. An opt-out client trains nothing but still picks.

With ``router`` other than ``"none"`` the federation also trains a *router*: a network
of the classifier's architecture with one logit per cluster model that, per input,
weighs the cluster models, ``p(y|x) = sum_j r_j(x) p_j(y|x)``. In each round every
sampled client takes one plain SGD step (learning rate ``router_lr``) on the router from
the server's, its gradient over the client's whole training set, and the server averages
the routers of all of them (FedSGD): every client holds inputs of one group and would
pull a router it trained for several local epochs to name its own cluster model for any
input (measured on the rotated Fashion-MNIST groups: with the ``[federated]`` local
settings the router swung from group to group between rounds). The router
learns either to name the cluster model the client chose this round for each of its
inputs (``"choice"``: a classifier of which client group an input comes from) or to
maximise the routed mixture's likelihood under the round's (frozen) cluster models
(``"likelihood"``: the mixture-of-experts objective). A client's best cluster
model serves inputs like its own; the routed mixture also serves inputs like other
clients' (another client group's rotation, say), which a per-client choice cannot. It is
reported as IFCA's ``routed`` variant and is the expert ``moe-ifca`` mixes with
``clusters = "routed"``. The router rides along with every cluster model (its
parameters under ``router.``, the same in each of the ``models`` rows), so the server's
models keep one leading axis; training the router draws its own random streams, so the
cluster models are the same with and without it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from fedmoe.engine import (
    Classifier,
    ClientData,
    Dropout,
    Evaluation,
    OptimizerConfig,
    TrainConfig,
    evaluate,
    train,
)
from fedmoe.engine.objective import mean_nll
from fedmoe.errors import ConfigError
from fedmoe.federation import Clients, State, Update, num_models, weighted_mean
from fedmoe.methods.base import Evaluated, Federated, Method, Output, RunSpec, global_model
from fedmoe.methods.fedavg import local_training
from fedmoe.methods.params import broadcast, prefixed, rows, unprefixed
from fedmoe.models import Model, Params

#: Each client's chosen model in the output of ``ifca``.
CHOICE = "choice"
#: The prefix of the router's parameters among the server's.
ROUTER = "router"
#: The label of the routed mixture among IFCA's variants.
ROUTED = "routed"


RouterTarget = Literal["none", "choice", "likelihood"]
#: The name of the trained clients' chosen model among a ``"choice"`` router's inputs.
TARGET = "target"


@dataclass(frozen=True)
class IfcaOptions:
    """``models``: how many global (cluster) models; ``router``: also federate a router
    over them, trained to name the client's chosen model or on the routed mixture's
    likelihood, one SGD step of ``router_lr`` per client and round (see the module
    docstring)."""

    models: int = 3
    router: RouterTarget = "none"
    router_lr: float = 0.2

    def validate(self, where: str) -> None:
        if self.models < 2:
            raise ConfigError(f"{where}.models must be at least 2, got {self.models}")
        if self.router_lr <= 0:
            raise ConfigError(f"{where}.router_lr must be positive, got {self.router_lr}")


def router_network(net: Model, models: int) -> Model:
    """The router: ``net``'s architecture with one logit per cluster model."""
    return net.as_gate(models)


def cluster_models(params: Params) -> Params:
    """The cluster models (leading axis: one row per model) among an IFCA server's (or
    federated output's ``global_model``) parameters."""
    return {n: p for n, p in params.items() if not n.startswith(ROUTER + ".")}


def router_params(params: Params) -> Params | None:
    """The router (one row) among an IFCA server's parameters; ``None`` without one."""
    router = unprefixed(params, ROUTER)
    return {n: p[:1] for n, p in router.items()} or None


def route(router: Model, params: Params, x: torch.Tensor, dropout: Dropout | None) -> torch.Tensor:
    """The ``router``'s log weights over the cluster models, ``(K|1, B, M)``."""
    dtype = next(iter(params.values())).dtype
    mask = None if dropout is None else dropout.mask(router, x.shape[1], dtype)
    return torch.log_softmax(router.forward(params, x, mask), -1)


@dataclass(frozen=True)
class Routed:
    """The routed mixture ``sum_j r_j(x) p_j(y|x)`` as an engine objective over the
    router's parameters, the ``clusters`` models (leading axis ``M``) frozen and in
    evaluation mode. Inputs ``(K|1, B, ...)`` give log-probs ``(K|1, B, C)``."""

    net: Model
    router: Model
    clusters: Params

    def log_probs(self, params: Params, x: torch.Tensor, dropout: Dropout | None) -> torch.Tensor:
        log_r = route(self.router, params, x, dropout)  # (K, B, M)
        with torch.no_grad():
            # The cluster models are shared by every client: their inputs form one batch.
            flat = self.net.forward(self.clusters, x.reshape(1, -1, *x.shape[2:]))
            log_pc = flat.reshape(-1, *x.shape[:2], flat.shape[-1]).permute(1, 2, 0, 3)
        return torch.logsumexp(log_r.unsqueeze(-1) + log_pc, 2)


@dataclass(frozen=True)
class ChoiceTarget:
    """The router trained to name each client's chosen cluster model (``TARGET`` among
    its inputs, ``(K, 1)``) for every one of the client's inputs."""

    router: Model

    def log_probs(self, params: Params, x: torch.Tensor, dropout: Dropout | None) -> torch.Tensor:
        return route(self.router, {n: p for n, p in params.items() if n != TARGET}, x, dropout)

    def client_loss(
        self,
        params: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        valid: torch.Tensor,
        dropout: Dropout | None,
    ) -> torch.Tensor:
        del y
        target = params[TARGET].long().expand_as(valid)
        return mean_nll(self.log_probs(params, x, dropout), target, valid)


def routed(run: RunSpec, server: Params) -> tuple[Routed, Params]:
    """The routed mixture of an IFCA server (or output's ``global_model``) trained with
    a router: the objective and the router's parameters (one row)."""
    router = router_params(server)
    if router is None:
        raise ValueError("this IFCA federation trained no router (method.ifca.router = 'none')")
    clusters = cluster_models(server)
    return Routed(run.net, router_network(run.net, num_models(clusters)), clusters), router


@torch.no_grad()
def evaluate_each(objective: Classifier, params: Params, data: ClientData) -> Evaluation:
    """Each of ``params``'s models on every client of ``data``: loss and accuracy
    ``(models, K)``."""
    device = next(iter(params.values())).device
    evs = [
        evaluate(objective, rows(params, torch.tensor([j], device=device)), data)
        for j in range(num_models(params))
    ]
    return Evaluation(
        torch.stack([e.loss for e in evs]), torch.stack([e.accuracy for e in evs]), data.n
    )


def best_models(objective: Classifier, params: Params, data: ClientData) -> torch.Tensor:
    """Each client's model with the lowest loss on its ``data`` ``(K,)``."""
    return evaluate_each(objective, params, data).loss.argmin(0)


def cluster_experts(
    run: RunSpec, server: Params, route: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """An IFCA server's (or output's ``global_model``'s) experts for a gate: each cluster
    model, or (``route``) the routed mixture as one; inputs ``(1, N, ...)`` to
    log-probs ``(M, N, C)`` (``M = 1`` routed)."""
    if route:
        objective, router = routed(run, server)
        return lambda x: objective.log_probs(router, x, None)
    clusters = cluster_models(server)
    return lambda x: run.net.forward(clusters, x)


def _train_router(
    run: RunSpec, options: Any, server: Params, clients: Clients, round_: int, best: torch.Tensor
) -> Params:
    """Round ``round_``'s router of each client of ``clients`` (which chose the models
    ``best``): one full-batch SGD step from the server's."""
    mixture, router = routed(run, server)
    start = broadcast(router, len(clients.ids))
    keys = clients.keys(run.seed, f"ifca/router/round/{round_}")
    sgd = OptimizerConfig("sgd", options.router_lr)
    local = TrainConfig(1, clients.train.capacity, sgd, max_cohort=run.federation.local.max_cohort)
    if options.router == "likelihood":
        return train(mixture, start, clients.train, local, keys).params
    target = {TARGET: best.to(next(iter(router.values())).dtype).unsqueeze(1)}
    objective = ChoiceTarget(mixture.router)
    return train(objective, start, clients.train, local, keys, fixed=target).params


def _copies(params: Params, models: int) -> Params:
    """One model (one row) repeated in ``models`` rows."""
    return {n: p.clone() for n, p in broadcast(params, models).items()}


class IfcaRounds(Federated):
    """IFCA's hooks (see the module docstring)."""

    def init(self, run: RunSpec, options: Any, device: torch.device) -> Params:
        models = torch.arange(options.models)
        clusters = run.net.init(run.seed, models, "clustered/init", run.dtype, device)
        if options.router == "none":
            return clusters
        router_net = router_network(run.net, options.models)
        router = router_net.init(run.seed, torch.tensor([0]), "clustered/router", run.dtype, device)
        return clusters | prefixed(_copies(router, options.models), ROUTER)

    def client_update(
        self,
        run: RunSpec,
        options: Any,
        server: Params,
        clients: Clients,
        round_: int,
        state: State,
    ) -> Update:
        clusters = cluster_models(server)
        best = best_models(Classifier(run.net), clusters, clients.train)
        params = local_training(run, rows(clusters, best), clients, round_)
        if options.router != "none":
            params |= prefixed(_train_router(run, options, server, clients, round_, best), ROUTER)
        return Update(params, best)

    def aggregate(self, server: Params, update: Update, weights: torch.Tensor) -> Params:
        assert update.choice is not None
        choice = update.choice.cpu().numpy()
        clusters = cluster_models(server)
        models = []
        for j in range(num_models(server)):
            chosen = torch.as_tensor(np.flatnonzero(choice == j), device=weights.device)
            if len(chosen) == 0:
                models.append(rows(clusters, torch.tensor([j], device=chosen.device)))
            else:
                updates = cluster_models(rows(update.params, chosen))
                models.append(weighted_mean(updates, weights[chosen]))
        new = {n: torch.cat([m[n] for m in models]) for n in clusters}
        router = unprefixed(update.params, ROUTER)
        if router:
            # Every sampled client trained the router: their mean, in every row.
            mean = weighted_mean(router, weights)
            new |= prefixed(_copies(mean, num_models(server)), ROUTER)
        return new

    def validate(
        self, run: RunSpec, options: Any, server: Params, clients: Clients, state: State
    ) -> Evaluation:
        del state
        every = evaluate_each(Classifier(run.net), cluster_models(server), clients.val)
        best = every.loss.argmin(0, keepdim=True)
        return Evaluation(
            every.loss.gather(0, best)[0], every.accuracy.gather(0, best)[0], clients.val.n
        )


class Ifca(Method):
    name = "ifca"
    label = "IFCA"
    description = "each client's best of several cluster models on validation (IFCA)"
    options = IfcaOptions
    federated = IfcaRounds()

    def personalise(
        self,
        run: RunSpec,
        options: Any,
        clients: Clients,
        inputs: Mapping[str, Output],
        federated: Output | None,
    ) -> Output:
        assert federated is not None
        clusters = cluster_models(global_model(federated))
        chosen = best_models(Classifier(run.net), clusters, clients.val)
        return Output(federated.state | {CHOICE: chosen}, info=federated.info)

    def evaluate(
        self,
        run: RunSpec,
        options: Any,
        own: Output,
        inputs: Mapping[str, Output],
        data: ClientData,
    ) -> Evaluated:
        chosen = own.state[CHOICE]
        server = global_model(own)
        acc = evaluate_each(Classifier(run.net), cluster_models(server), data).accuracy
        main = Evaluated(acc.gather(0, chosen.unsqueeze(0))[0], scalars={"model": chosen})
        if options.router == "none":
            return main
        objective, router = routed(run, server)
        mixed = Evaluated(evaluate(objective, router, data).accuracy)
        variants = {f"best model per client ({options.models} models)": main, ROUTED: mixed}
        return Evaluated(main.accuracy, variants=variants, scalars=main.scalars)

    def details(
        self, options: Any, scalars: Mapping[str, list[float]], variant: str | None = None
    ) -> dict[str, Any]:
        if variant is not None:
            return {}
        chosen = [int(m) for m in scalars["model"]]
        return {
            "models": options.models,
            "clients_per_model": np.bincount(chosen, minlength=options.models).tolist(),
            "model_of_client": chosen,
        }
