"""Vectorised evaluation: K models on K data sets (or one shared set), in bounded batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fedmoe.engine import parallel
from fedmoe.engine.cohort import ClientData
from fedmoe.engine.objective import Objective
from fedmoe.models import Params

#: Upper bound on examples (summed over clients) in one evaluation forward pass.
EVAL_EXAMPLES = 20_000

#: Examples per client in one pass of :func:`evaluate`: every batch has exactly this many
#: positions per client (padded past its last example), so the arithmetic a client's
#: evaluation gets does not depend on which other clients share its cohort (a worker's
#: chunk, the clients still training under early stopping, a Flower node alone).
EVAL_WIDTH = 100


@dataclass(frozen=True)
class Evaluation:
    """Per-client results: mean NLL ``loss``, ``accuracy`` in [0, 1], example count ``n``
    (each ``(K,)``). A client with no examples has NaN loss and accuracy."""

    loss: torch.Tensor
    accuracy: torch.Tensor
    n: torch.Tensor


def nll(log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example negative log-likelihood: ``(K, B, C), (K, B) -> (K, B)``."""
    return -log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


@dataclass
class Tally:
    """Running per-client NLL and correct counts over evaluation batches."""

    loss: torch.Tensor
    correct: torch.Tensor

    @staticmethod
    def zeros(k: int, device: torch.device) -> Tally:
        z = torch.zeros(k, dtype=torch.float64, device=device)
        return Tally(z, z.clone())

    def add(self, log_probs: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> None:
        """Count a batch: log-probs ``(K, B, C)``, labels and validity ``(K, B)``."""
        self.loss += torch.where(valid, nll(log_probs, y), 0.0).sum(1, dtype=torch.float64)
        self.correct += ((log_probs.argmax(-1) == y) & valid).sum(1, dtype=torch.float64)

    def result(self, n: torch.Tensor) -> Evaluation:
        """Means over ``n`` examples per client."""
        count = n.to(torch.float64)
        return Evaluation(self.loss / count, self.correct / count, n)


def batches(
    data: ClientData, max_examples: int = EVAL_EXAMPLES, width: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Walk K clients' examples in order, about ``max_examples`` (summed over clients)
    at a time: yields inputs ``(K, B, *shape)``, labels and validity masks ``(K, B)``.
    With ``width``, every batch has exactly ``B = width`` positions (the last padded)."""
    k = data.num_clients
    step = width or max(1, max_examples // max(k, 1))
    limit = int(data.n.max()) if k else 0
    for start in range(0, limit, step):
        end = start + step if width else min(start + step, limit)
        positions = torch.arange(start, end, device=data.index.device)
        yield data.batch(positions.expand(k, -1))


def evaluate(
    objective: Objective, params: Params, data: ClientData, max_examples: int = EVAL_EXAMPLES
) -> Evaluation:
    """Evaluate K models (``params`` stacked on axis 0) on the K clients of ``data``, or
    one model (client axis of length 1) on all of them, in passes of at most about
    ``max_examples`` examples. K models are split over the worker processes of
    :func:`fedmoe.engine.parallel.using` when a pool is in use, with the same results:
    a client's examples are walked in batches of :data:`EVAL_WIDTH` whatever its cohort."""
    k = data.num_clients
    pool = parallel.active()
    single = next(iter(params.values())).shape[0] == 1
    # Chunks of at least two clients: one model alone is the "one model for all" case.
    pieces = 0 if pool is None else min(pool.n, k // 2)
    if pool is None or single or pieces < 2 or not pool.can_send(objective):
        return _evaluate(objective, params, data, max_examples)
    calls = []
    for idx in parallel.chunks(k, pieces):
        idx = idx.to(data.index.device)
        part = {n: p[idx] for n, p in params.items()}
        calls.append((objective, part, data.select(idx), max_examples))
    parts = pool.map(_evaluate, calls)
    cat = torch.cat
    return Evaluation(
        cat([e.loss for e in parts]), cat([e.accuracy for e in parts]), cat([e.n for e in parts])
    )


@torch.no_grad()
def _evaluate(
    objective: Objective, params: Params, data: ClientData, max_examples: int
) -> Evaluation:
    k = data.num_clients
    single = next(iter(params.values())).shape[0] == 1
    if single:
        return _evaluate_group(objective, params, data, max_examples)
    group = max(1, max_examples // EVAL_WIDTH)
    if k <= group:
        return _evaluate_group(objective, params, data, max_examples)
    parts = []
    for start in range(0, k, group):
        idx = torch.arange(start, min(start + group, k), device=data.index.device)
        part = {n: p[idx] for n, p in params.items()}
        parts.append(_evaluate_group(objective, part, data.select(idx), max_examples))
    cat = torch.cat
    return Evaluation(
        cat([e.loss for e in parts]), cat([e.accuracy for e in parts]), cat([e.n for e in parts])
    )


def _evaluate_group(
    objective: Objective, params: Params, data: ClientData, max_examples: int
) -> Evaluation:
    k = data.num_clients
    tally = Tally.zeros(k, data.index.device)
    single = next(iter(params.values())).shape[0] == 1
    width = None if single else EVAL_WIDTH
    for x, y, valid in batches(data, max_examples, width):
        if single and x.shape[0] > 1:
            # One model for all clients: evaluate their batches as one (no K copies).
            flat = objective.log_probs(params, x.reshape(1, -1, *x.shape[2:]), None)
            log_probs = flat.reshape(*x.shape[:2], -1)
        else:
            log_probs = objective.log_probs(params, x, None).expand(k, -1, -1)
        tally.add(log_probs, y, valid)
    return tally.result(data.n)
