"""The personalisation methods, each a choice of initialisation and objective.

- ``local``: a fresh model per client trained on its own data.
- ``finetune``: the final global model fine-tuned per client.
- ``moe``: specialist initialised from the client's fine-tuned model, frozen global
  expert, fresh gate; specialist and gate (or the gate alone) trained on the mixture,
  jointly or staged (the gate alone first).

All three use the engine's early stopping on each client's validation set and return
each client's best parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedmoe import rng
from fedmoe.engine import Classifier, ClientData, Objective, TrainConfig, train
from fedmoe.engine.train import ProgressFn
from fedmoe.methods.mixture import GATE, SPECIALIST, Mixture, MixtureConfig
from fedmoe.methods.params import broadcast, prefixed
from fedmoe.models import Network, Params


@dataclass(frozen=True)
class PersonalisationResult:
    """Each client's personalised parameters (stacked), the objective that evaluates
    them, epochs trained and best validation loss per client."""

    params: Params
    objective: Objective
    epochs: torch.Tensor
    best_loss: torch.Tensor


def _keys(seed: int, clients: torch.Tensor, phase: str, device: torch.device) -> torch.Tensor:
    return rng.client_keys(seed, clients.cpu(), phase).to(device)


def local(
    net: Network,
    train_data: ClientData,
    val_data: ClientData,
    clients: torch.Tensor,
    cfg: TrainConfig,
    seed: int,
    progress: ProgressFn | None = None,
) -> PersonalisationResult:
    """Train a fresh model per client (``clients``: ids ``(K,)`` for the random streams)."""
    x = train_data.x
    init = net.init(seed, clients.cpu(), "local/init", dtype=x.dtype, device=x.device)
    keys = _keys(seed, clients, "local/train", x.device)
    objective = Classifier(net)
    res = train(objective, init, train_data, cfg, keys, val_data, progress)
    return PersonalisationResult(res.params, objective, res.epochs, res.best_loss)


def finetune(
    net: Network,
    global_params: Params,
    train_data: ClientData,
    val_data: ClientData,
    clients: torch.Tensor,
    cfg: TrainConfig,
    seed: int,
    progress: ProgressFn | None = None,
) -> PersonalisationResult:
    """Fine-tune the global model (client axis of length 1) on each client's data."""
    keys = _keys(seed, clients, "finetune/train", train_data.x.device)
    objective = Classifier(net)
    init = broadcast(global_params, len(clients))
    res = train(objective, init, train_data, cfg, keys, val_data, progress)
    return PersonalisationResult(res.params, objective, res.epochs, res.best_loss)


def moe(
    net: Network,
    gate_net: Network,
    global_params: Params,
    specialists: Params,
    train_data: ClientData,
    val_data: ClientData,
    clients: torch.Tensor,
    cfg: TrainConfig,
    mixture: MixtureConfig,
    seed: int,
    progress: ProgressFn | None = None,
) -> PersonalisationResult:
    """Train each client's mixture: ``specialists`` (stacked, usually the fine-tuned
    models) initialise the specialist, the gate starts fresh, the global expert is
    frozen. Returned parameters hold ``specialist.*`` and ``gate.*`` entries."""
    x = train_data.x
    gate = gate_net.init(seed, clients.cpu(), "moe/gate-init", dtype=x.dtype, device=x.device)
    out_bias = f"{gate_net.denses[-1].name}.bias"
    gate[out_bias] = gate[out_bias] + mixture.gate_bias
    specialist = prefixed(specialists, SPECIALIST)
    trained = prefixed(gate, GATE)
    objective = Mixture(net, gate_net, global_params, mixture.pool)
    keys = _keys(seed, clients, "moe/train", x.device)
    epochs = torch.zeros(len(clients), dtype=torch.int64, device=x.device)
    if mixture.schedule == "staged" and mixture.train_specialist:
        first_keys = _keys(seed, clients, "moe/train-gate", x.device)
        first = train(
            objective, trained, train_data, cfg, first_keys, val_data, progress, specialist
        )
        trained, epochs = first.params, first.epochs
    fixed: Params = {}
    if mixture.train_specialist:
        trained |= specialist
    else:
        fixed = specialist
    res = train(objective, trained, train_data, cfg, keys, val_data, progress, fixed)
    return PersonalisationResult(res.params | fixed, objective, epochs + res.epochs, res.best_loss)
