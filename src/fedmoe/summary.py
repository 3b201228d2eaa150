"""Summaries of per-client values for results.json: accuracies and gate weights."""

from __future__ import annotations

import math
from typing import Any

import torch

from fedmoe.data.partition import Partition


def summarise(values: torch.Tensor) -> dict[str, Any]:
    """Per-client values (``(K,)``) as ``per_client`` (rounded), ``mean``, ``std``, ``min``."""
    v = values.detach().cpu().to(torch.float64)
    return {
        "per_client": [round(float(a), 6) for a in v],
        "mean": float(v.mean()),
        "std": float(v.std(unbiased=False)),
        "min": float(v.min()),
    }


def gate_summary(
    g: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, majority: torch.Tensor
) -> dict[str, Any]:
    """Per-client means of gate values ``g`` ``(K, N)`` over the valid examples: all, those
    of the client's majority classes and the others (``y``: ``(K|1, N)``)."""
    g = g.to(torch.float64)
    y = y.expand_as(valid)
    is_major = torch.gather(majority, 1, y) & valid
    out: dict[str, Any] = {}
    for name, mask in (("all", valid), ("majority", is_major), ("other", valid & ~is_major)):
        means = (torch.where(mask, g, 0.0).sum(1) / mask.sum(1)).cpu()
        out[name] = [None if math.isnan(float(v)) else round(float(v), 6) for v in means]
    return out


def majority_mask(part: Partition, num_classes: int, device: torch.device) -> torch.Tensor:
    """``(K, C)`` bool: each client's majority classes."""
    mask = torch.zeros(part.num_clients, num_classes, dtype=torch.bool)
    for i, c in enumerate(part.clients):
        mask[i, list(c.majority)] = True
    return mask.to(device)
