"""The built-in networks, fused: K clients' copies in one kernel per layer.

A :class:`Network` describes an architecture: the names, shapes and fan-ins of its
parameters and a *cohort forward* that evaluates K independent copies at once. The
parameters live in a ``dict[str, Tensor]`` whose tensors carry a leading client axis
``K``; the input is ``(K, B, *input_shape)``. Convolutions run as one grouped convolution
over all K clients and linear layers as one batched matmul, so K clients cost one
kernel launch per layer. ``K == 1`` is the ordinary single-model case.

Every network also builds a plain ``torch.nn.Module`` with the same parameter names and
the same maths (:meth:`Network.module`), used by reference loops, tests and baselines.

Outputs: classifiers return log-probabilities (a real ``log_softmax``, unlike the
reference code's ``Softmax`` fed to ``NLLLoss``); gates return the logit ``a`` of the
gate value ``g = sigmoid(a)`` so the mixture can be computed stably in log space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fedmoe import rng
from fedmoe.errors import ConfigError
from fedmoe.models.base import Params, ParamSpec, finish

Output = Literal["log_softmax", "logit"]


@dataclass(frozen=True)
class _Conv:
    name: str
    in_ch: int
    out_ch: int
    kernel: int


@dataclass(frozen=True)
class _Dense:
    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class Network:
    """A LeNet-style trunk (optional conv + 2x2 max-pool blocks) and dense layers.

    ``convs`` are applied in order, each followed by 2x2 max-pooling and ReLU (the same
    function as ReLU then pooling, since ReLU is monotonic); then the
    features are flattened and passed through ``denses`` with ReLU between them, and
    dropout after the first dense layer (the paper's placement). The last dense layer has
    ``num_outputs`` units; ``output`` says whether they become log-probabilities or gate
    logits.
    """

    name: str
    input_shape: tuple[int, ...]
    convs: tuple[_Conv, ...]
    denses: tuple[_Dense, ...]
    output: Output
    dropout: float = 0.5

    @property
    def num_outputs(self) -> int:
        return self.denses[-1].out_features

    @property
    def dropout_features(self) -> int:
        """Width of the layer dropout is applied to (the first dense layer's output)."""
        return self.denses[0].out_features

    def param_specs(self) -> list[ParamSpec]:
        specs: list[ParamSpec] = []
        for c in self.convs:
            fan_in = c.in_ch * c.kernel * c.kernel
            specs.append(
                ParamSpec(f"{c.name}.weight", (c.out_ch, c.in_ch, c.kernel, c.kernel), fan_in)
            )
            specs.append(ParamSpec(f"{c.name}.bias", (c.out_ch,), fan_in))
        for d in self.denses:
            specs.append(
                ParamSpec(f"{d.name}.weight", (d.out_features, d.in_features), d.in_features)
            )
            specs.append(ParamSpec(f"{d.name}.bias", (d.out_features,), d.in_features))
        return specs

    def num_params(self) -> int:
        return sum(math.prod(s.shape) for s in self.param_specs())

    def init(
        self,
        seed: int,
        clients: torch.Tensor,
        phase: str,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Params:
        """Fresh parameters for clients ``clients`` (int64 ``(K,)``), stacked on axis 0.

        PyTorch's default initialisation (uniform in +-1/sqrt(fan_in) for weights and
        biases), drawn from the counter-based stream of ``(seed, client, phase)``.
        """
        keys = rng.client_keys(seed, clients.cpu(), phase)
        params: Params = {}
        for i, spec in enumerate(self.param_specs()):
            bound = 1.0 / math.sqrt(spec.fan_in)
            u = rng.uniform(keys, i, spec.shape, torch.float64)
            params[spec.name] = ((2.0 * u - 1.0) * bound).to(dtype=dtype, device=device)
        return params

    def forward(
        self,
        params: Params,
        x: torch.Tensor,
        dropout_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Evaluate K models on their own inputs, or all K on one shared input.

        ``x``: ``(K, B, *input_shape)``, or ``(1, B, *input_shape)`` to feed the same
        batch to every model (K is the parameters' leading size). ``dropout_mask``:
        ``None`` (eval mode) or ``(K, B, dropout_features)`` holding 0 or
        ``1 / (1 - dropout)``. Returns ``(K, B, num_outputs)`` log-probabilities, or
        gate logits: ``(K, B)`` for a one-output gate, else ``(K, B, num_outputs)``.
        """
        return self.head(params, self.features(params, x, dropout_mask))

    def head(self, params: Params, features: torch.Tensor) -> torch.Tensor:
        """The last layer and the output on :meth:`features`: ``forward`` is
        ``head(params, features(params, x))``."""
        d = self.denses[-1]
        w, bias = params[f"{d.name}.weight"], params[f"{d.name}.bias"]
        return finish(torch.baddbmm(bias.unsqueeze(1), features, w.transpose(1, 2)), self.output)

    @property
    def feature_size(self) -> int:
        """Width of :meth:`features` (the last hidden layer)."""
        return self.denses[-1].in_features

    def features(
        self,
        params: Params,
        x: torch.Tensor,
        dropout_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The last hidden layer (after its ReLU): ``(K, B, feature_size)``; arguments as
        in :meth:`forward`."""
        k, b = next(iter(params.values())).shape[0], x.shape[1]
        if x.shape[0] not in (1, k):
            raise ValueError(f"inputs for {x.shape[0]} clients but parameters for {k}")
        if self.convs:
            # Clients side by side on the channel axis: (B, K * C, H, W), one grouped conv.
            # A shared input needs no copies: its first conv is an ordinary conv with the
            # K clients' filters stacked as output channels.
            h = x[0] if x.shape[0] == 1 else x.transpose(0, 1).reshape(b, -1, *x.shape[3:])
            # float32 runs on oneDNN, in channels_last: its grouped convolution and pooling
            # are about twice as fast in NHWC as in NCHW for these narrow layers (bench/,
            # measured). oneDNN computes a lone model's convolution (groups=1) in another
            # order than a group's, so a client's result would depend on whether it trains
            # alone (a Flower node, the last client of a cohort, a worker's chunk): one
            # model runs as a group of two copies, and every client gets the same
            # arithmetic. float64 runs on PyTorch's own kernels, in NCHW, whose grouped
            # convolution is one lone convolution per group: no copies needed.
            native = h.dtype == torch.float64
            double = k == 1 and not native
            m = 2 if double else k
            if double:
                h = torch.cat([h, h], 1)
            if not native:
                h = h.contiguous(memory_format=torch.channels_last)
            for c in self.convs:
                w = params[f"{c.name}.weight"].reshape(k * c.out_ch, -1, c.kernel, c.kernel)
                bias = params[f"{c.name}.bias"].reshape(-1)
                if double:
                    w, bias = torch.cat([w, w]), torch.cat([bias, bias])
                groups = m if h.shape[1] == m * c.in_ch else 1
                h = F.conv2d(h, w, bias, groups=groups)
                # relu(max_pool(h)) == max_pool(relu(h)) (relu is monotonic), with the
                # ReLU and its backward on a quarter of the elements.
                h = F.relu(F.max_pool2d(h, 2))
            h = h.reshape(b, m, -1)[:, :k].transpose(0, 1)
        else:
            h = x.reshape(x.shape[0], b, -1).expand(k, b, -1)
        for i, d in enumerate(self.denses[:-1]):
            w, bias = params[f"{d.name}.weight"], params[f"{d.name}.bias"]
            h = F.relu(torch.baddbmm(bias.unsqueeze(1), h, w.transpose(1, 2)))
            if i == 0 and dropout_mask is not None:
                h = h * dropout_mask
        return h

    def dropout_mask(
        self, keys: torch.Tensor, counter: int, batch: int, dtype: torch.dtype
    ) -> torch.Tensor:
        """An inverted-dropout mask ``(K, batch, dropout_features)`` for one step."""
        keep = 1.0 - self.dropout
        u = rng.uniform(keys, counter, (batch, self.dropout_features), dtype)
        return (u < keep).to(dtype) / keep

    def as_gate(self, outputs: int) -> Network:
        """The same trunk with ``outputs`` gate logits (what :func:`build_network` makes
        with ``gate=True``)."""
        last = self.denses[-1]
        denses = (*self.denses[:-1], _Dense(last.name, last.in_features, outputs))
        name = self.name if self.name.endswith("-gate") else f"{self.name}-gate"
        return Network(name, self.input_shape, self.convs, denses, "logit", self.dropout)

    @property
    def output_bias(self) -> str:
        """The name of the last layer's bias (a gate's starting offset goes there)."""
        return f"{self.denses[-1].name}.bias"

    def module(self) -> nn.Module:
        """An ordinary single-model ``nn.Module`` with the same parameter names and maths."""
        return _ReferenceModule(self)


class _ReferenceModule(nn.Module):
    """The per-client PyTorch model a plain training loop would use."""

    def __init__(self, net: Network) -> None:
        super().__init__()
        self.net = net
        for c in net.convs:
            self.add_module(c.name, nn.Conv2d(c.in_ch, c.out_ch, c.kernel))
        for d in net.denses:
            self.add_module(d.name, nn.Linear(d.in_features, d.out_features))
        self.drop = nn.Dropout(net.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for c in self.net.convs:
            h = F.relu(F.max_pool2d(getattr(self, c.name)(h), 2))
        h = h.flatten(1)
        last = len(self.net.denses) - 1
        for i, d in enumerate(self.net.denses):
            h = getattr(self, d.name)(h)
            if i < last:
                h = F.relu(h)
            if i == 0:
                h = self.drop(h)
        if self.net.output == "logit":
            return h.squeeze(-1)
        return F.log_softmax(h, dim=-1)


def _pooled(size: int, kernel: int) -> int:
    return (size - kernel + 1) // 2


def _lenet(
    name: str,
    input_shape: tuple[int, ...],
    channels: tuple[int, int],
    hidden: tuple[int, int],
    num_outputs: int,
    output: Output,
    dropout: float,
) -> Network:
    if len(input_shape) != 3:
        raise ConfigError(f"model {name!r} needs image inputs (C, H, W), got shape {input_shape}")
    c_in, h, w = input_shape
    for _ in range(2):
        h, w = _pooled(h, 5), _pooled(w, 5)
    if h < 1 or w < 1:
        raise ConfigError(f"model {name!r} needs images of at least 16x16, got {input_shape[1:]}")
    convs = (_Conv("conv1", c_in, channels[0], 5), _Conv("conv2", channels[0], channels[1], 5))
    flat = channels[1] * h * w
    denses = (
        _Dense("fc1", flat, hidden[0]),
        _Dense("fc2", hidden[0], hidden[1]),
        _Dense("fc3", hidden[1], num_outputs),
    )
    return Network(name, input_shape, convs, denses, output, dropout)


def _mlp(
    name: str, input_shape: tuple[int, ...], num_outputs: int, output: Output, dropout: float
) -> Network:
    flat = math.prod(input_shape)
    denses = (_Dense("fc1", flat, 128), _Dense("fc2", 128, 64), _Dense("fc3", 64, num_outputs))
    return Network(name, input_shape, (), denses, output, dropout)


ARCHITECTURES = ("fmnist-cnn", "cifar-cnn", "mlp")


def build_network(
    arch: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    gate: bool = False,
    dropout: float = 0.5,
    gate_outputs: int = 1,
) -> Network:
    """Build a classifier (``gate=False``) or a gate (same trunk, ``gate_outputs``
    logits; one by default).

    ``fmnist-cnn``: the paper's Fashion-MNIST CNN, conv(C->6,5) pool, conv(6->12,5) pool,
    fc 192->84, dropout, fc 84->42, fc 42->classes. ``cifar-cnn``: conv(C->6,5) pool,
    conv(6->16,5) pool, fc 400->120, dropout, fc 120->84, fc 84->classes. ``mlp``:
    flatten, 128, dropout, 64, classes. The CNNs adapt their first dense layer to the
    input size.
    """
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    if gate_outputs < 1:
        raise ConfigError(f"a gate needs at least 1 output, got {gate_outputs}")
    outputs = gate_outputs if gate else num_classes
    out: Output = "logit" if gate else "log_softmax"
    name = f"{arch}-gate" if gate else arch
    if arch == "fmnist-cnn":
        return _lenet(name, input_shape, (6, 12), (84, 42), outputs, out, dropout)
    if arch == "cifar-cnn":
        return _lenet(name, input_shape, (6, 16), (120, 84), outputs, out, dropout)
    if arch == "mlp":
        return _mlp(name, input_shape, outputs, out, dropout)
    raise ConfigError(f"unknown model {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def default_architecture(input_shape: tuple[int, ...]) -> str:
    """The paper's choice for an input shape: the CIFAR CNN for 3-channel images, the
    Fashion-MNIST CNN for other images of at least 16x16, an MLP otherwise."""
    if len(input_shape) == 3 and min(input_shape[1:]) >= 16:
        return "cifar-cnn" if input_shape[0] == 3 else "fmnist-cnn"
    return "mlp"


def stack(per_client: list[Params]) -> Params:
    """Stack single-client parameter dicts (no client axis) along a new axis 0."""
    return {k: torch.stack([p[k] for p in per_client]) for k in per_client[0]}


def unstack(params: Params) -> list[Params]:
    """Split stacked parameters into per-client dicts (views, no copy)."""
    k = next(iter(params.values())).shape[0]
    return [{n: t[i] for n, t in params.items()} for i in range(k)]
