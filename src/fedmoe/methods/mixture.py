"""The federated mixture of experts: a gate mixes a local specialist and the global model.

    p(y|x) = g(x) p_specialist(y|x) + (1 - g(x)) p_global(y|x),    g(x) = sigmoid(a(x))

computed in log space as ``logsumexp(log g + log p_s, log(1-g) + log p_g)`` with
``log g = logsigmoid(a)`` and ``log(1-g) = logsigmoid(-a)``, so it is stable even when
the gate saturates. The global expert is frozen and evaluated in eval mode (no dropout),
unlike the reference code, which left it in train mode.

The reference code's *log-linear pool* ``g log p_s + (1-g) log p_g`` (trained with NLL
although it is not normalised) is available as ``pool="log-linear"`` for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from fedmoe.engine import Dropout
from fedmoe.methods.params import unprefixed
from fedmoe.models import Model, Params

Pool = Literal["probability", "log-linear"]
Schedule = Literal["joint", "staged"]

SPECIALIST, GATE = "specialist", "gate"


@dataclass(frozen=True)
class Mixture:
    """Objective over ``specialist.*`` and ``gate.*`` parameters with a frozen global
    expert ``expert`` (``global_params``: client axis of length 1, shared by all
    clients). The specialist is a ``specialist`` network (``expert``'s architecture by
    default: experts of different kinds mix the same way)."""

    expert: Model
    gate: Model
    global_params: Params
    pool: Pool = "probability"
    specialist: Model | None = None

    def parts(
        self, params: Params, x: torch.Tensor, dropout: Dropout | None
    ) -> tuple[torch.Tensor, ...]:
        """Specialist log-probs ``(K,B,C)``, global log-probs ``(K,B,C)`` (``(1,B,C)`` for
        a shared input ``x`` of shape ``(1, B, ...)``), gate logits ``(K,B)``."""
        b, dtype = x.shape[1], next(iter(params.values())).dtype
        specialist = self.specialist or self.expert
        s_mask = None if dropout is None else dropout.mask(specialist, b, dtype, slot=0)
        g_mask = None if dropout is None else dropout.mask(self.gate, b, dtype, slot=1)
        log_ps = specialist.forward(unprefixed(params, SPECIALIST), x, s_mask)
        logit = self.gate.forward(unprefixed(params, GATE), x, g_mask)
        with torch.no_grad():
            # One frozen model for every client: its inputs form one batch.
            flat = self.expert.forward(self.global_params, x.reshape(1, -1, *x.shape[2:]), None)
            log_pg = flat.reshape(*x.shape[:2], -1)
        return log_ps, log_pg, logit

    def log_probs(self, params: Params, x: torch.Tensor, dropout: Dropout | None) -> torch.Tensor:
        log_ps, log_pg, logit = self.parts(params, x, dropout)
        return combine(log_ps, log_pg, logit, self.pool)


def combine(
    log_ps: torch.Tensor, log_pg: torch.Tensor, logit: torch.Tensor, pool: Pool
) -> torch.Tensor:
    """Mix expert log-probs with gate logits (see the module docstring)."""
    a = logit.unsqueeze(-1)
    if pool == "log-linear":
        g = torch.sigmoid(a)
        return g * log_ps + (1.0 - g) * log_pg
    return torch.logaddexp(F.logsigmoid(a) + log_ps, F.logsigmoid(-a) + log_pg)
