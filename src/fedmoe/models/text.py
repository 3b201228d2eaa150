"""The paper's AG News networks: a classifier and a gate over token ids, each an
embedding of width 100, a bidirectional LSTM of 64 units and a linear layer over the
two directions' final hidden states, concatenated (Listo Zec et al., section 4). They
run on the generic path (:class:`~fedmoe.models.module.ModuleNetwork`), client by
client: PyTorch has no batching rule for LSTMs."""

from __future__ import annotations

import torch
from torch import nn

from fedmoe.models.module import ModelFactory

EMBEDDING, HIDDEN = 100, 64
#: Token id 0 pads a text to its length (see fedmoe.data's text reader).
PADDING = 0


class BiLSTM(nn.Module):
    """Token ids ``(B, L)`` (0 = padding) -> ``outputs`` logits."""

    def __init__(self, vocab: int, outputs: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, EMBEDDING, padding_idx=PADDING)
        self.lstm = nn.LSTM(EMBEDDING, HIDDEN, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * HIDDEN, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(self.embed(x))
        logits: torch.Tensor = self.out(torch.cat([h[-2], h[-1]], dim=-1))
        return logits


def bilstm_factory(vocab: int) -> ModelFactory:
    """The factory ``(input_shape, outputs) -> BiLSTM`` over ``vocab`` token ids."""

    def make(input_shape: tuple[int, ...], outputs: int) -> nn.Module:
        del input_shape
        return BiLSTM(vocab, outputs)

    return make
