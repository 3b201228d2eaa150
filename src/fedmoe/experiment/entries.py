"""A method's results.json entry, from its per-client scores (docs/results-format.md).

The simulator gets the scores of all clients at once; the Flower ServerApp gathers them
node by node (:meth:`Scores.concat`). Either way :func:`method_entry` writes the entry,
so both engines write the same format with no per-method code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedmoe.methods.base import Evaluated, Method
from fedmoe.summary import gate_summary, summarise

#: What every method is scored on: each client's local test set, the global test set
#: and each client's validation set (what choices are made on: tuning grids, never the
#: test sets).
SPLITS = ("local_test", "global_test", "val")
#: The splits a mixture's gate statistics are kept for.
GATE_SPLITS = SPLITS[:2]
GATE_GROUPS = ("all", "majority", "other")


@dataclass(frozen=True)
class Scores:
    """Per-client results on one split: accuracy, a mixture's mean gate weight on the
    specialist per group (``None`` where a client has no sample of the group), the
    method's scalars, and the same for each variant."""

    accuracy: list[float]
    gate: dict[str, list[float | None]] | None = None
    scalars: dict[str, list[float]] = field(default_factory=dict)
    variants: dict[str, Scores] = field(default_factory=dict)

    @staticmethod
    def of(ev: Evaluated, majority: torch.Tensor) -> Scores:
        """The scores of an evaluation (``majority``: bool ``(K, C)``, each client's
        majority classes)."""
        gate = None
        if ev.gate is not None:
            gate = gate_summary(ev.gate.g, ev.gate.y, ev.gate.valid, majority)
        return Scores(
            [float(a) for a in ev.accuracy.detach().cpu().to(torch.float64)],
            gate,
            {
                k: [float(v) for v in t.detach().cpu().to(torch.float64)]
                for k, t in ev.scalars.items()
            },
            {label: Scores.of(v, majority) for label, v in ev.variants.items()},
        )

    def flat(self, prefix: str = "") -> dict[str, float]:
        """A single client's scores as flat numbers (NaN for a missing gate group), as
        a Flower node reports them."""
        out = {f"{prefix}accuracy": self.accuracy[0]}
        if self.gate is not None:
            for group in GATE_GROUPS:
                value = self.gate[group][0]
                out[f"{prefix}gate.{group}"] = math.nan if value is None else float(value)
        out |= {f"{prefix}scalar.{k}": v[0] for k, v in self.scalars.items()}
        for j, variant in enumerate(self.variants.values()):
            out |= variant.flat(f"{prefix}variant.{j}.")
        return out

    @staticmethod
    def from_flat(values: Mapping[str, float], variants: Sequence[str], prefix: str = "") -> Scores:
        """One client's :meth:`flat` scores back (``variants``: the variant labels in
        order); KeyError when one is missing."""
        gate = None
        if f"{prefix}gate.all" in values:
            gate = {
                g: [None if math.isnan(v := values[f"{prefix}gate.{g}"]) else v]
                for g in GATE_GROUPS
            }
        start = f"{prefix}scalar."
        scalars = {k[len(start) :]: [v] for k, v in values.items() if k.startswith(start)}
        return Scores(
            [values[f"{prefix}accuracy"]],
            gate,
            scalars,
            {
                label: Scores.from_flat(values, (), f"{prefix}variant.{j}.")
                for j, label in enumerate(variants)
            },
        )

    @staticmethod
    def concat(parts: Sequence[Scores]) -> Scores:
        """Several clients' scores, in order, as one."""
        first = parts[0]
        gate = None
        if first.gate is not None:
            gate = {g: [v for p in parts for v in (p.gate or {}).get(g, [])] for g in GATE_GROUPS}
        return Scores(
            [a for p in parts for a in p.accuracy],
            gate,
            {k: [v for p in parts for v in p.scalars[k]] for k in first.scalars},
            {label: Scores.concat([p.variants[label] for p in parts]) for label in first.variants},
        )


def _split_entries(
    method: Method, options: Any, splits: Mapping[str, Scores], variant: str | None
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        s: summarise(torch.tensor(splits[s].accuracy, dtype=torch.float64)) for s in SPLITS
    }
    if splits[SPLITS[0]].gate is not None:
        entry["gate"] = {s: splits[s].gate for s in GATE_SPLITS}
    details = method.details(options, splits[SPLITS[0]].scalars, variant)
    if details:
        entry["details" if variant is None else "extra"] = details
    return entry


def method_entry(
    method: Method,
    options: Any,
    splits: Mapping[str, Scores],
    epochs: list[int] | None,
    info: Mapping[str, Any],
) -> dict[str, Any]:
    """The results.json entry of ``method`` from its scores on every split, the epochs
    it trained (per client) and its output's ``info``."""
    scores = _split_entries(method, options, splits, None)
    entry: dict[str, Any] = {
        "label": method.label,
        "description": method.description,
        "local_test": scores["local_test"],
        "global_test": scores["global_test"],
        "val": scores["val"],
        "epochs": epochs,
        "contender": method.contender,
    }
    if "gate" in scores:
        entry["gate"] = scores["gate"]
    if method.baselines is not None:
        entry["baselines"] = {s: list(b) for s, b in method.baselines.items()}
    if "federation" in info:
        entry["federation"] = info["federation"]
    variants = splits[SPLITS[0]].variants
    if variants:
        entry["variants"] = {}
        for label in variants:
            v = _split_entries(
                method, options, {s: splits[s].variants[label] for s in SPLITS}, label
            )
            entry["variants"][label] = v.pop("extra", {}) | v
    if "details" in scores:
        entry["details"] = scores["details"]
    return entry
