"""Small helpers over stacked parameter dicts."""

from __future__ import annotations

import torch

from fedmoe.models import Params


def broadcast(params: Params, k: int) -> Params:
    """A single model (client axis of length 1) seen as ``k`` clients' models.

    Returns expanded views, not copies; the engine copies what it trains."""
    return {n: p.expand(k, *p.shape[1:]) for n, p in params.items()}


def prefixed(params: Params, prefix: str) -> Params:
    """``{"w": t}`` -> ``{"prefix.w": t}``."""
    return {f"{prefix}.{n}": p for n, p in params.items()}


def unprefixed(params: Params, prefix: str) -> Params:
    """The entries of ``params`` under ``prefix.``, with the prefix removed."""
    start = len(prefix) + 1
    return {n[start:]: p for n, p in params.items() if n.startswith(prefix + ".")}


def rows(params: Params, index: torch.Tensor) -> Params:
    """The clients ``index`` of stacked parameters."""
    return {n: p[index] for n, p in params.items()}
