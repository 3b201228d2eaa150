"""What a stage's clients are and what a federated round's cohort sends back."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fedmoe import rng
from fedmoe.engine import ClientData
from fedmoe.models import Params

#: A method's output: named tensors, per-client ones stacked on axis 0 (``K`` rows),
#: shared ones (a global model) with their own leading axis (1, or one row per model).
State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Clients:
    """The clients a stage runs on: K of them in the simulator, one on a Flower node.

    ``ids``: int64 ``(K,)`` on the CPU, the clients' ids (they key every random stream,
    so client ``i`` trains the same wherever it runs); ``train`` and ``val``: their data;
    ``opt_out``: bool ``(K,)``."""

    ids: torch.Tensor
    train: ClientData
    val: ClientData
    opt_out: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.train.x.device

    def keys(self, seed: int, phase: str) -> torch.Tensor:
        """The clients' random keys for ``phase``, on their device."""
        return rng.client_keys(seed, self.ids, phase).to(self.device)

    def select(self, rows: torch.Tensor) -> Clients:
        """The clients at positions ``rows`` (int64, on the CPU)."""
        on_device = rows.to(self.device)
        return Clients(
            self.ids[rows],
            self.train.select(on_device),
            self.val.select(on_device),
            self.opt_out[rows],
        )


@dataclass(frozen=True)
class Update:
    """A cohort's federated update: the trained shared parameters (stacked, one row per
    client), a per-client ``choice`` ``(K,)`` of which server model each trained (several
    server models, as IFCA's) or ``None``, and the clients' new ``state`` (kept on the
    clients across rounds; empty when the method keeps none)."""

    params: Params
    choice: torch.Tensor | None = None
    state: State = field(default_factory=dict)
