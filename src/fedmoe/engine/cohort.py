"""K clients' data as index arrays into one shared tensor.

The dataset is decoded and moved to the device once; a cohort only holds, per client,
the row indices of its examples, padded to the largest client (``n`` says how many are
real). Batches are gathered from the shared tensor on the fly, so a cohort of thousands
of clients costs index arrays, not copies of their images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ClientData:
    """Examples of K clients.

    ``x``: ``(N_total, *shape)`` float inputs shared by all clients; ``y``: ``(N_total,)``
    int64 labels; ``index``: ``(K, N)`` int64 rows of ``x`` per client, padded with 0
    past ``n[k]``; ``n``: ``(K,)`` int64 number of real examples per client.
    ``shared``: every client has the same rows (a global test set); batches then carry
    a client axis of length 1 that models broadcast over, instead of K copies.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    n: torch.Tensor
    shared: bool = False

    @staticmethod
    def from_indices(x: torch.Tensor, y: torch.Tensor, indices: Sequence[np.ndarray]) -> ClientData:
        """Build from one index array per client (rows of ``x``)."""
        width = max((len(i) for i in indices), default=0)
        index = np.zeros((len(indices), max(width, 1)), dtype=np.int64)
        for k, rows in enumerate(indices):
            index[k, : len(rows)] = rows
        n = torch.tensor([len(i) for i in indices], dtype=torch.int64, device=x.device)
        return ClientData(x, y, torch.from_numpy(index).to(x.device), n)

    @staticmethod
    def common(x: torch.Tensor, y: torch.Tensor, num_clients: int) -> ClientData:
        """Every one of ``num_clients`` clients sees all of ``x`` (a global test set)."""
        rows = torch.arange(x.shape[0], device=x.device)
        index = rows.unsqueeze(0).expand(num_clients, -1)
        n = torch.full((num_clients,), x.shape[0], dtype=torch.int64, device=x.device)
        return ClientData(x, y, index, n, shared=True)

    @property
    def num_clients(self) -> int:
        return int(self.index.shape[0])

    @property
    def capacity(self) -> int:
        """Padded number of examples per client."""
        return int(self.index.shape[1])

    def select(self, clients: torch.Tensor) -> ClientData:
        """The sub-cohort ``clients`` (positions in this cohort)."""
        return ClientData(self.x, self.y, self.index[clients], self.n[clients], self.shared)

    def compact(self) -> ClientData:
        """The same cohort over only the rows of ``x`` its clients use (what travels to
        another machine); a shared cohort is returned as it is."""
        if self.shared:
            return self
        rows, index = torch.unique(self.index, return_inverse=True)
        return ClientData(self.x[rows], self.y[rows], index, self.n)

    def batch(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gather a batch: ``positions`` ``(K, B)`` into each client's examples.

        Returns inputs ``(K, B, *shape)`` (``(1, B, *shape)`` when ``shared``, with the
        same positions for every client), labels ``(K, B)`` and a validity mask ``(K, B)``
        (``False`` where the position is past the client's real examples).
        """
        valid = positions < self.n.unsqueeze(1)
        rows = torch.gather(self.index, 1, positions.clamp(max=self.capacity - 1))
        if self.shared:
            return self.x[rows[:1]], self.y[rows], valid
        return self.x[rows], self.y[rows], valid
