"""PFL-MoE (Guo, Mei, Xiao, Wu, Yin and Chang, "PFL-MoE: Personalized Federated Learning
Based on Mixture of Experts", arXiv 2012.15589, 2021; reference code guobbin/PFL-MoE).

After FedAvg, each client builds a mixture of two experts, gated per input:

1. It splits its training data once, at random (seeded per client): a quarter (the
   paper's ``len // 4``; here :func:`~fedmoe.data.holdout.held_out_count`, at least one
   example and at least one left, none for a client of fewer than two) is held out for
   the gate, the rest fine-tunes.
2. A personal copy of the global model is fine-tuned on the rest with the
   ``[personalise]`` settings, early stopped on the client's validation set (fedmoe's FT
   on three quarters of the data). The paper's PFL-MF fine-tunes the dense layers over a
   frozen convolutional base; fedmoe's networks single out no such base, so the whole
   copy is fine-tuned: PFL-MoE over fine-tuning, which the paper frames as one of its
   instances.
3. A fresh gate ``g(x) = sigmoid(w . h(x) + b)`` (one linear layer, as in the paper)
   is trained with Adam on the held-out quarter only, both experts frozen (eval mode),
   early stopped on the validation set. The mixture is the paper's, of the experts'
   outputs *before* the softmax: ``softmax(g z_personal + (1 - g) z_global)``, computed
   from log-probabilities (they differ from logits by a per-example constant, which the
   softmax removes). The gate reads ``h(x)``: the frozen global model's last hidden
   layer (``gate_input = "features"``, PFL-MF; the paper's is the output of the global
   model's convolutional base) or the flattened input (``"input"``, PFL-MFE).

Shared: nothing of its own; it builds on FedAvg's best global model (``needs``). Kept
per client: the personal model and the gate. Every client builds the same, opt-out ones
included: they received the global model and have their own data. ``g`` reported as
the mixture's gate value is the weight on the personal model (the reference code's
``g`` weights the global model: the same family of gates with the sign flipped).

Defaults: the reference code's gate training (Adam, lr 1e-3, weight decay 5e-4, 200
epochs); fedmoe adds early stopping on the validation set (``[personalise]``'s
stopping) where the reference reads test accuracy every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch

from fedmoe import rng
from fedmoe.data.holdout import held_out_count
from fedmoe.engine import ClientData, Dropout, OptimizerConfig, batch_order, train
from fedmoe.engine.evaluate import Tally, batches
from fedmoe.errors import ConfigError
from fedmoe.federation import Clients
from fedmoe.methods.base import Evaluated, GateValues, Method, Output, RunSpec, global_model
from fedmoe.methods.fedavg import FedAvg
from fedmoe.methods.mixture import GATE, SPECIALIST, combine
from fedmoe.methods.moe import MIXTURE_BASELINES
from fedmoe.methods.params import broadcast, prefixed, unprefixed
from fedmoe.methods.personal import personal_model, train_personal
from fedmoe.models import Model, Params

GateInput = Literal["features", "input"]


@dataclass(frozen=True)
class PflMoeOptions:
    """``gate_input``: what the gate reads, ``features`` (PFL-MF: the frozen global
    model's last hidden layer) or ``input`` (PFL-MFE: the flattened input); ``lr``,
    ``weight_decay``, ``epochs``: the gate's Adam; ``gate_fraction``: the share of each
    client's training data held out for the gate."""

    gate_input: GateInput = "features"
    lr: float = 1e-3
    weight_decay: float = 5e-4
    epochs: int = 200
    gate_fraction: float = 0.25

    def validate(self, where: str) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"{where}.lr must be positive, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError(f"{where}.weight_decay must be >= 0, got {self.weight_decay}")
        if self.epochs < 1:
            raise ConfigError(f"{where}.epochs must be at least 1, got {self.epochs}")
        if not 0 < self.gate_fraction < 1:
            raise ConfigError(f"{where}.gate_fraction must be in (0, 1), got {self.gate_fraction}")


def split_for_gate(
    train: ClientData, keys: torch.Tensor, fraction: float
) -> tuple[ClientData, ClientData]:
    """Each client's training examples as (fine-tuning part, gate part): a random
    :func:`held_out_count` ``(n, fraction)`` of them (none when ``n < 2``) for the gate,
    the rest for fine-tuning; disjoint, together all of them. ``keys``: the clients'."""
    order = batch_order(keys, 0, train.n, train.capacity).cpu()
    index = train.index.cpu()
    fit, gate = [], []
    for k, n in enumerate(train.n.tolist()):
        held = held_out_count(n, fraction) if n >= 2 else 0
        mine = index[k, order[k, :n]].numpy()
        gate.append(mine[:held])
        fit.append(mine[held:])
    return (
        ClientData.from_indices(train.x, train.y, fit),
        ClientData.from_indices(train.x, train.y, gate),
    )


def gate_width(run: RunSpec, gate_input: GateInput) -> int:
    """How many numbers the gate reads per example."""
    return run.net.feature_size if gate_input == "features" else math.prod(run.input_shape)


def init_gate(
    seed: int, clients: torch.Tensor, width: int, dtype: torch.dtype, device: torch.device
) -> Params:
    """Fresh linear gates ``gate.weight`` ``(K, 1, width)``, ``gate.bias`` ``(K, 1)``,
    PyTorch's default ``nn.Linear`` initialisation (uniform in +-1/sqrt(width)) from the
    clients' streams."""
    keys = rng.client_keys(seed, clients.cpu(), "pfl-moe/gate-init")
    bound = 1.0 / math.sqrt(width)
    weight = (2.0 * rng.uniform(keys, 0, (1, width), torch.float64) - 1.0) * bound
    bias = (2.0 * rng.uniform(keys, 1, (1,), torch.float64) - 1.0) * bound
    return {
        f"{GATE}.weight": weight.to(dtype=dtype, device=device),
        f"{GATE}.bias": bias.to(dtype=dtype, device=device),
    }


def mix(log_pp: torch.Tensor, log_pg: torch.Tensor, logit: torch.Tensor) -> torch.Tensor:
    """``log softmax(g log p_personal + (1 - g) log p_global)``, ``g = sigmoid(logit)``:
    the paper's mixture of the experts' outputs before the softmax (``(K, B, C)``)."""
    return torch.log_softmax(combine(log_pp, log_pg, logit, "log-linear"), -1)


@dataclass(frozen=True)
class GatedExperts:
    """The mixture over rows ``[gate input (width) | log p_personal (C) | log p_global
    (C)]`` (see :func:`expert_rows`), training ``gate.*`` only."""

    width: int
    classes: int

    def logit(self, params: Params, rows: torch.Tensor) -> torch.Tensor:
        """The gate's logit ``(K, B)`` (``g`` is its sigmoid)."""
        w, b = params[f"{GATE}.weight"], params[f"{GATE}.bias"]
        return torch.baddbmm(b.unsqueeze(1), rows[..., : self.width], w.transpose(1, 2))[..., 0]

    def log_probs(
        self, params: Params, rows: torch.Tensor, dropout: Dropout | None
    ) -> torch.Tensor:
        w, c = self.width, self.classes
        log_pp, log_pg = rows[..., w : w + c], rows[..., w + c : w + 2 * c]
        return mix(log_pp, log_pg, self.logit(params, rows))


@torch.no_grad()
def expert_rows(
    net: Model, gate_input: GateInput, personal: Params, global_params: Params, x: torch.Tensor
) -> torch.Tensor:
    """The frozen experts (eval mode) on a batch ``x`` ``(K|1, B, *shape)`` as rows
    ``(K, B, width + 2C)``: the gate's input, the personal and the global
    log-probabilities."""
    k = next(iter(personal.values())).shape[0]
    log_pp = net.forward(personal, x)
    # One global model for every client: its inputs form one batch.
    features = net.features(global_params, x.reshape(1, -1, *x.shape[2:]))
    log_pg = net.head(global_params, features).reshape(*x.shape[:2], -1)
    if gate_input == "features":
        gate_in = features.reshape(*x.shape[:2], -1)
    else:
        gate_in = x.flatten(2).to(log_pp.dtype)
    return torch.cat([gate_in.expand(k, -1, -1), log_pp, log_pg.expand(k, -1, -1)], -1)


def cached(
    net: Model, gate_input: GateInput, personal: Params, global_params: Params, data: ClientData
) -> ClientData:
    """``data`` as :func:`expert_rows`, computed once, for the gate's training."""
    k = data.num_clients
    parts, labels = [], []
    for x, y, _ in batches(data):
        parts.append(expert_rows(net, gate_input, personal, global_params, x))
        labels.append(y)
    if not parts:  # no client has an example: nothing to train on
        nothing = [np.zeros(0, dtype=np.int64)] * k
        return ClientData.from_indices(data.x[:1], data.y[:1], nothing)
    rows, y = torch.cat(parts, 1), torch.cat(labels, 1)
    length = rows.shape[1]
    index = [i * length + np.arange(n) for i, n in enumerate(data.n.tolist())]
    return ClientData.from_indices(rows.reshape(k * length, -1), y.reshape(-1), index)


class PflMoe(Method):
    name = "pfl-moe"
    label = "PFL-MoE"
    description = (
        "a linear gate over a fine-tuned copy and the frozen global model, fitted on a "
        "held-out quarter (PFL-MoE)"
    )
    options = PflMoeOptions
    needs = (FedAvg.name,)
    baselines = MIXTURE_BASELINES

    def personalise(
        self,
        run: RunSpec,
        options: Any,
        clients: Clients,
        inputs: Mapping[str, Output],
        federated: Output | None,
    ) -> Output:
        split = clients.keys(run.seed, "pfl-moe/split")
        fit, held = split_for_gate(clients.train, split, options.gate_fraction)
        glob = global_model(inputs[FedAvg.name])
        start = broadcast(glob, len(clients.ids))
        tuning = Clients(clients.ids, fit, clients.val, clients.opt_out)
        tuned = train_personal(run, tuning, start, "pfl-moe/finetune", "PFL-MoE fine-tune epochs")
        personal = personal_model(tuned)
        width = gate_width(run, options.gate_input)
        gate = init_gate(run.seed, clients.ids, width, run.dtype, clients.device)
        net, how = run.net, options.gate_input
        rows = cached(net, how, personal, glob, held)
        val = cached(net, how, personal, glob, clients.val)
        cfg = replace(
            run.personalise,
            epochs=options.epochs,
            optimizer=OptimizerConfig("adam", options.lr, weight_decay=options.weight_decay),
        )
        keys = clients.keys(run.seed, "pfl-moe/gate")
        progress = run.progress("PFL-MoE gate epochs", cfg.epochs)
        objective = GatedExperts(width, run.num_classes)
        res = train(objective, gate, rows, cfg, keys, val, progress)
        assert tuned.epochs is not None
        state = prefixed(personal, SPECIALIST) | res.params
        return Output(state, tuned.epochs + res.epochs, res.best_loss)

    @torch.no_grad()
    def evaluate(
        self,
        run: RunSpec,
        options: Any,
        own: Output,
        inputs: Mapping[str, Output],
        data: ClientData,
    ) -> Evaluated:
        objective = GatedExperts(gate_width(run, options.gate_input), run.num_classes)
        personal = unprefixed(own.state, SPECIALIST)
        gate = prefixed(unprefixed(own.state, GATE), GATE)
        glob = global_model(inputs[FedAvg.name])
        tally = Tally.zeros(data.num_clients, data.index.device)
        parts = []
        for x, y, valid in batches(data):
            rows = expert_rows(run.net, options.gate_input, personal, glob, x)
            tally.add(objective.log_probs(gate, rows, None), y, valid)
            parts.append((torch.sigmoid(objective.logit(gate, rows)), y, valid))
        g, y, valid = (torch.cat(t, 1) for t in zip(*parts, strict=True))
        return Evaluated(tally.result(data.n).accuracy, GateValues(g, y, valid))
