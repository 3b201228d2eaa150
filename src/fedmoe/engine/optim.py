"""Batched optimisers over stacked parameters, with a per-client step mask.

State tensors have the parameters' shapes (leading client axis ``K``). A client whose
mask entry is ``False`` is left exactly as it was: parameters, moments and step count.
The update arithmetic follows ``torch.optim.Adam`` / ``torch.optim.SGD`` (single-tensor
implementation, L2 ``weight_decay`` added to the gradient) so the engine reproduces a
plain per-client PyTorch loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from fedmoe.errors import ConfigError
from fedmoe.models import Params

OptimizerName = Literal["adam", "sgd"]


@dataclass(frozen=True)
class OptimizerConfig:
    """Hyper-parameters of the local optimiser."""

    name: OptimizerName = "adam"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.0
    weight_decay: float = 0.0


class BatchedOptimizer(Protocol):
    """An optimiser over K clients' stacked parameters."""

    def step(self, params: Params, grads: Params, active: torch.Tensor) -> None:
        """Update ``params`` in place for clients where ``active`` (bool ``(K,)``) holds."""

    def select(self, index: torch.Tensor) -> None:
        """Keep only the state of clients ``index`` (when a cohort is compacted)."""


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1, *([1] * (like.dim() - 1)))


class BatchedAdam:
    """Adam for K clients at once; each client has its own step count."""

    def __init__(self, params: Params, cfg: OptimizerConfig) -> None:
        self.cfg = cfg
        first = next(iter(params.values()))
        self.steps = torch.zeros(first.shape[0], dtype=torch.int64, device=first.device)
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}

    def step(self, params: Params, grads: Params, active: torch.Tensor) -> None:
        b1, b2 = self.cfg.betas
        self.steps += active.to(torch.int64)
        t = self.steps.clamp(min=1).to(torch.float64)
        dtype = next(iter(params.values())).dtype
        step_size = (self.cfg.lr / (1.0 - b1**t)).to(dtype)
        bc2_sqrt = torch.sqrt(1.0 - b2**t).to(dtype)
        everyone = bool(active.all())
        for name, p in params.items():
            g = grads[name]
            if self.cfg.weight_decay:
                g = g.add(p, alpha=self.cfg.weight_decay)
            m, v = self.exp_avg[name], self.exp_avg_sq[name]
            if everyone:  # the common case: in-place, no masking
                m.lerp_(g, 1.0 - b1)
                v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
                denom = (v.sqrt() / _expand(bc2_sqrt, p)).add_(self.cfg.eps)
                p.sub_(m / denom * _expand(step_size, p))
                continue
            mask = _expand(active, p)
            m.copy_(torch.where(mask, torch.lerp(m, g, 1.0 - b1), m))
            v.copy_(torch.where(mask, v.mul(b2).addcmul(g, g, value=1.0 - b2), v))
            denom = (v.sqrt() / _expand(bc2_sqrt, p)).add_(self.cfg.eps)
            p.copy_(torch.where(mask, p - m / denom * _expand(step_size, p), p))

    def select(self, index: torch.Tensor) -> None:
        self.steps = self.steps[index]
        self.exp_avg = {n: t[index] for n, t in self.exp_avg.items()}
        self.exp_avg_sq = {n: t[index] for n, t in self.exp_avg_sq.items()}


class BatchedSGD:
    """SGD (optionally with momentum) for K clients at once."""

    def __init__(self, params: Params, cfg: OptimizerConfig) -> None:
        self.cfg = cfg
        first = next(iter(params.values()))
        self.buf: Params = {}
        self.started = torch.zeros(first.shape[0], dtype=torch.bool, device=first.device)

    def step(self, params: Params, grads: Params, active: torch.Tensor) -> None:
        for name, p in params.items():
            g = grads[name]
            if self.cfg.weight_decay:
                g = g.add(p, alpha=self.cfg.weight_decay)
            mask = _expand(active, p)
            if self.cfg.momentum:
                buf = self.buf.setdefault(name, torch.zeros_like(p))
                fresh = _expand(~self.started, p)
                new_buf = torch.where(fresh, g, buf.mul(self.cfg.momentum).add(g))
                buf.copy_(torch.where(mask, new_buf, buf))
                g = buf
            p.copy_(torch.where(mask, p.add(g, alpha=-self.cfg.lr), p))
        self.started |= active

    def select(self, index: torch.Tensor) -> None:
        self.started = self.started[index]
        self.buf = {n: t[index] for n, t in self.buf.items()}


class GroupedOptimizer:
    """Batched optimisers over disjoint groups of the parameters, each with its own
    settings; a step or a selection applies to every group."""

    def __init__(self, groups: list[tuple[list[str], BatchedOptimizer]]) -> None:
        self.groups = groups

    def step(self, params: Params, grads: Params, active: torch.Tensor) -> None:
        for names, optimizer in self.groups:
            optimizer.step({n: params[n] for n in names}, {n: grads[n] for n in names}, active)

    def select(self, index: torch.Tensor) -> None:
        for _, optimizer in self.groups:
            optimizer.select(index)


def make_optimizer(
    params: Params, cfg: OptimizerConfig, own: Mapping[str, OptimizerConfig] | None = None
) -> BatchedOptimizer:
    """The batched optimiser named by ``cfg.name``; parameters named in ``own`` step with
    their own settings instead (names ``params`` lacks are ignored)."""
    settings = {n: (own or {}).get(n, cfg) for n in params}
    for c in {cfg, *settings.values()}:
        if not (c.lr > 0 and math.isfinite(c.lr)):
            raise ConfigError(f"learning rate must be a positive number, got {c.lr}")
    groups: dict[OptimizerConfig, list[str]] = {}
    for name, c in settings.items():
        groups.setdefault(c, []).append(name)
    if len(groups) <= 1:
        return _single(params, cfg if not groups else next(iter(groups)))
    return GroupedOptimizer(
        [(names, _single({n: params[n] for n in names}, c)) for c, names in groups.items()]
    )


def _single(params: Params, cfg: OptimizerConfig) -> BatchedOptimizer:
    if cfg.name == "adam":
        return BatchedAdam(params, cfg)
    return BatchedSGD(params, cfg)
