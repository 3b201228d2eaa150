"""What every network is to the engine and the methods: a template whose parameters
live outside it, in a dict of tensors stacked on a leading client axis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its name, its shape for a single client, and its fan-in."""

    name: str
    shape: tuple[int, ...]
    fan_in: int


class Model(Protocol):
    """A network K clients' copies of which are evaluated at once.

    Classifiers return log-probabilities ``(K, B, classes)``; gates return logits:
    ``(K, B)`` for one output, else ``(K, B, outputs)``. ``x`` is ``(K, B, *input_shape)``,
    or ``(1, B, *input_shape)`` to feed one batch to every client's model. The *body* is
    everything up to the last layer (:meth:`features`), the *head* that last layer
    (:meth:`head`): ``forward(p, x) == head(p, features(p, x))``."""

    @property
    def name(self) -> str: ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def num_outputs(self) -> int: ...

    @property
    def dropout(self) -> float:
        """The dropout rate in training (0: none)."""
        ...

    @property
    def feature_size(self) -> int:
        """Width of :meth:`features`."""
        ...

    @property
    def output_bias(self) -> str:
        """The name of the last layer's bias (a gate's starting offset goes there)."""
        ...

    def param_specs(self) -> list[ParamSpec]: ...

    def num_params(self) -> int: ...

    def init(
        self,
        seed: int,
        clients: torch.Tensor,
        phase: str,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Params:
        """Fresh parameters of clients ``clients`` (int64 ``(K,)``), stacked on axis 0,
        drawn from the counter-based streams of ``(seed, client, phase)``."""
        ...

    def forward(
        self, params: Params, x: torch.Tensor, dropout_mask: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def features(
        self, params: Params, x: torch.Tensor, dropout_mask: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def head(self, params: Params, features: torch.Tensor) -> torch.Tensor: ...

    def dropout_mask(
        self, keys: torch.Tensor, counter: int, batch: int, dtype: torch.dtype
    ) -> torch.Tensor:
        """What :meth:`forward` needs for one training step's dropout (``keys``: the
        clients' int64 keys ``(K,)``)."""
        ...

    def module(self) -> nn.Module:
        """An ordinary single-model ``nn.Module`` with the same parameter names."""
        ...

    def as_gate(self, outputs: int) -> Model:
        """The same architecture with ``outputs`` gate logits."""
        ...


def finish(h: torch.Tensor, output: str) -> torch.Tensor:
    """A network's last layer ``(K, B, outputs)`` as its output: log-probabilities, or
    gate logits (``(K, B)`` for one output). At least float32: under bf16 mixed
    precision the layers compute in bfloat16, the probabilities do not."""
    h = h.to(torch.promote_types(h.dtype, torch.float32))
    if output == "logit":
        return h.squeeze(-1) if h.shape[-1] == 1 else h
    return torch.log_softmax(h, dim=-1)


def head_names(net: Model) -> frozenset[str]:
    """The names of the head's parameters (the last layer's, see :class:`Model`); the
    rest are the body's."""
    prefix = net.output_bias.removesuffix("bias")
    return frozenset(s.name for s in net.param_specs() if s.name.startswith(prefix))


def split_head(net: Model, params: Params) -> tuple[Params, Params]:
    """``params`` as (body, head)."""
    head = head_names(net)
    return (
        {n: p for n, p in params.items() if n not in head},
        {n: p for n, p in params.items() if n in head},
    )
