"""Per-client training written the way the reference code does it: a deep copy of the
model, a ``DataLoader`` over the client's tensors and a fresh ``torch.optim.Adam`` per
client. The per-client loop, Flower's ClientApp and pfl's mixture model share it, so
they do the same work per client.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench.workloads import LR
from fedmoe.methods.mixture import combine


class MixtureModule(nn.Module):
    """W2's model: a trainable specialist and gate, and a frozen global expert kept in
    eval mode; log-probabilities of the probability mixture."""

    def __init__(self, specialist: nn.Module, gate: nn.Module, global_model: nn.Module) -> None:
        super().__init__()
        self.specialist = specialist
        self.gate = gate
        self.global_model = global_model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> MixtureModule:
        super().train(mode)
        self.global_model.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_ps = self.specialist(x)
        logit = self.gate(x)
        with torch.no_grad():
            log_pg = self.global_model(x)
        return combine(log_ps, log_pg, logit, "probability")


def fit(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, epochs: int
) -> nn.Module:
    """Train ``model`` in place with a fresh Adam on ``(x, y)``, shuffled each epoch;
    returns it. ``model`` outputs log-probabilities."""
    model.train()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=LR)
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            F.nll_loss(model(xb), yb).backward()
            optimizer.step()
    return model


def train_classifier(
    global_model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, epochs: int
) -> nn.Module:
    """W1/W3: a deep copy of the global model trained on one client's data."""
    return fit(copy.deepcopy(global_model), x, y, batch_size, epochs)


def train_mixture(
    specialist: nn.Module,
    gate: nn.Module,
    global_model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    epochs: int,
) -> MixtureModule:
    """W2: a copy of the client's specialist and its fresh gate trained on the mixture
    with the (shared, frozen) global expert."""
    mixture = MixtureModule(copy.deepcopy(specialist), gate, global_model)
    fit(mixture, x, y, batch_size, epochs)
    return mixture


def average(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """FedAvg's weighted average of state dicts."""
    total = float(sum(weights))
    return {
        name: sum(
            (s[name] * (w / total) for s, w in zip(states, weights, strict=True)),
            torch.zeros_like(states[0][name]),
        )
        for name in states[0]
    }
