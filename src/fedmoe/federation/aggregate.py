"""Aggregation of stacked client updates."""

from __future__ import annotations

import torch

from fedmoe.models import Params


def weighted_mean(updates: Params, weights: torch.Tensor) -> Params:
    """Weighted average of stacked client models: ``(m, ...)`` -> ``(1, ...)``.

    ``weights`` (``(m,)``, e.g. sample counts) must be non-negative with a positive sum.
    """
    w = weights.to(torch.float64)
    if w.numel() == 0 or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError("aggregation weights must be non-negative with a positive sum")
    w = w / w.sum()
    out: Params = {}
    for name, p in updates.items():
        shaped = w.to(p.dtype).reshape(-1, *([1] * (p.dim() - 1)))
        out[name] = (p * shaped).sum(0, keepdim=True)
    return out


def num_models(params: Params) -> int:
    """How many server models ``params`` stacks (its leading size)."""
    return int(next(iter(params.values())).shape[0])
