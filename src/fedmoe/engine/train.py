"""The one training path: K clients trained in lockstep.

Each step gathers one batch per client, evaluates all K models in one vectorised forward
(see :mod:`fedmoe.models`), takes one backward of the summed per-client mean losses
(client k's loss depends only on client k's parameters, so this yields every client's
own gradient) and one batched optimiser step. Clients with fewer examples are padded:
a client with no real example in a step is masked and its parameters and optimiser
state stay untouched. Early stopping is per client: a stopped client is dropped from the
cohort (the cohort is compacted) and its best parameters are kept as copies.

Randomness (batch order, dropout) comes from per-client counter-based streams
(:mod:`fedmoe.rng`), so a client's training does not depend on which clients share its
cohort or how a large population is chunked into cohorts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from fedmoe import rng
from fedmoe.engine import parallel, worker
from fedmoe.engine.cohort import ClientData
from fedmoe.engine.evaluate import EVAL_EXAMPLES, evaluate
from fedmoe.engine.objective import (
    AfterStep,
    Dropout,
    Objective,
    OwnOptimizers,
    OwnStep,
    client_losses,
)
from fedmoe.engine.optim import BatchedOptimizer, OptimizerConfig, make_optimizer
from fedmoe.models import Params

#: Dropout counters are ``epoch * STEPS_PER_EPOCH_LIMIT + step`` so a client's s-th batch
#: gets the same draw whatever the padded length of its cohort.
STEPS_PER_EPOCH_LIMIT = 1 << 20

_ORDER, _DROPOUT = 1, 2


@dataclass(frozen=True)
class EarlyStopping:
    """Validate every ``check_every`` epochs (and after the last epoch); a check improves
    when the validation loss falls below the best so far minus ``min_delta``; a client
    stops after ``patience`` checks in a row without improvement. The starting
    parameters count as the first check, so training never returns worse-than-initial
    parameters on validation."""

    check_every: int = 5
    patience: int = 10
    min_delta: float = 0.01


@dataclass(frozen=True)
class TrainConfig:
    """How to train a cohort: epochs are an upper bound when early stopping is on."""

    epochs: int
    batch_size: int
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    early_stopping: EarlyStopping | None = None
    max_cohort: int = 4096
    eval_examples: int = EVAL_EXAMPLES


@dataclass(frozen=True)
class TrainResult:
    """``params``: the trained (or, with early stopping, best) parameters, stacked;
    ``epochs``: epochs each client trained (``(K,)`` int64); ``best_loss``: validation
    loss of the returned parameters (``(K,)``, NaN without early stopping)."""

    params: Params
    epochs: torch.Tensor
    best_loss: torch.Tensor


ProgressFn = Callable[[int, int], None]


def batch_order(keys: torch.Tensor, epoch: int, n: torch.Tensor, capacity: int) -> torch.Tensor:
    """Each client's example order for one epoch: ``(K, capacity)`` positions whose first
    ``n[k]`` entries are a random permutation of ``range(n[k])``, padding after."""
    words = rng.random_words(rng.subkeys(keys, _ORDER), epoch, capacity)
    pos = torch.arange(capacity, device=keys.device)
    words = torch.where(pos < n.unsqueeze(1), words, (1 << 32) + pos)
    return torch.argsort(words, dim=1, stable=True)


def train(
    objective: Objective,
    params: Params,
    data: ClientData,
    cfg: TrainConfig,
    keys: torch.Tensor,
    val: ClientData | None = None,
    progress: ProgressFn | None = None,
    fixed: Params | None = None,
) -> TrainResult:
    """Train K clients' ``params`` (stacked, not modified) on ``data`` with ``keys``
    (int64 ``(K,)`` per-client random keys); ``val`` is required for early stopping.
    ``fixed`` holds per-client parameters the objective reads but that are not trained
    (stacked like ``params``, names disjoint from them). Cohorts larger than
    ``cfg.max_cohort`` are trained chunk by chunk, and split over the worker processes
    of :func:`fedmoe.engine.parallel.using` when a pool is in use (same results)."""
    if cfg.early_stopping is not None and val is None:
        raise ValueError("early stopping needs validation data")
    k = data.num_clients
    fixed = fixed or {}
    pool = parallel.active()
    pieces = parallel.pieces(k, cfg.max_cohort, pool)
    if pieces == 1:
        return _train_cohort(objective, params, fixed, data, cfg, keys, val, progress)
    calls = []
    for chunk, idx in enumerate(parallel.chunks(k, pieces)):
        idx = idx.to(keys.device)
        part_val = None if val is None else val.select(idx)
        part = (_rows(params, idx), _rows(fixed, idx), data.select(idx), cfg, keys[idx], part_val)
        calls.append((chunk, objective, *part))
    if pool is not None and pool.can_send(objective):

        def show(reports: Sequence[worker.Report]) -> None:
            if progress is not None:
                progress(max(r[1] for r in reports), sum(r[2] for r in reports))

        parts = pool.map(_train_chunk, calls, show)
    else:
        parts = [_train_cohort(*call[1:], progress) for call in calls]
    return TrainResult(
        {n: torch.cat([r.params[n] for r in parts]) for n in params},
        torch.cat([r.epochs for r in parts]),
        torch.cat([r.best_loss for r in parts]),
    )


def _train_chunk(
    chunk: int,
    objective: Objective,
    params: Params,
    fixed: Params,
    data: ClientData,
    cfg: TrainConfig,
    keys: torch.Tensor,
    val: ClientData | None,
) -> TrainResult:
    """One chunk of a cohort, in a worker process (see :mod:`fedmoe.engine.parallel`)."""
    return _train_cohort(objective, params, fixed, data, cfg, keys, val, worker.report(chunk))


def _rows(params: Params, index: torch.Tensor) -> Params:
    return {n: p[index] for n, p in params.items()}


class _Best:
    """Per-client best parameters and validation losses, for early stopping."""

    def __init__(self, params: Params, loss: torch.Tensor) -> None:
        self.params = {n: p.detach().clone() for n, p in params.items()}
        self.loss = loss.clone()
        self.wait = torch.zeros_like(loss, dtype=torch.int64)

    def check(
        self, live: Params, where: torch.Tensor, loss: torch.Tensor, es: EarlyStopping
    ) -> torch.Tensor:
        """Record a check of clients ``where`` (positions in the full cohort) whose live
        parameters are ``live``; returns which of them stop (bool, same length)."""
        improved = loss < self.loss[where] - es.min_delta
        best_rows = where[improved]
        self.loss[best_rows] = loss[improved]
        for n, p in live.items():
            self.params[n][best_rows] = p.detach()[improved]
        self.wait[where] = torch.where(improved, 0, self.wait[where] + 1)
        return self.wait[where] >= es.patience


def _train_cohort(
    objective: Objective,
    params: Params,
    fixed: Params,
    data: ClientData,
    cfg: TrainConfig,
    keys: torch.Tensor,
    val: ClientData | None,
    progress: ProgressFn | None,
) -> TrainResult:
    k = data.num_clients
    device = keys.device
    live = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    own = objective.optimizers(cfg.optimizer) if isinstance(objective, OwnOptimizers) else None
    optimizer = make_optimizer(live, cfg.optimizer, own)
    epochs = torch.zeros(k, dtype=torch.int64, device=device)
    where = torch.arange(k, device=device)
    es = cfg.early_stopping
    best: _Best | None = None
    if es is not None:
        assert val is not None
        best = _Best(live, evaluate(objective, live | fixed, val, cfg.eval_examples).loss)
    for epoch in range(cfg.epochs):
        if where.numel() == 0:
            break
        cohort = data.select(where) if where.numel() < k else data
        _run_epoch(objective, live, fixed, optimizer, cohort, keys[where], epoch, cfg.batch_size)
        epochs[where] += 1
        if progress is not None:
            progress(epoch + 1, int(where.numel()))
        due = es is not None and ((epoch + 1) % es.check_every == 0 or epoch + 1 == cfg.epochs)
        if not due:
            continue
        assert es is not None and best is not None and val is not None
        loss = evaluate(objective, live | fixed, val.select(where), cfg.eval_examples).loss
        stop = best.check(live, where, loss, es)
        if bool(stop.any()):
            keep = torch.nonzero(~stop).squeeze(1)
            where = where[keep]
            live = {n: p.detach()[keep].requires_grad_(True) for n, p in live.items()}
            fixed = _rows(fixed, keep)
            optimizer.select(keep)
    if best is None:
        nan = torch.full((k,), math.nan, dtype=torch.float64, device=device)
        return TrainResult({n: p.detach() for n, p in live.items()}, epochs, nan)
    return TrainResult(best.params, epochs, best.loss)


def _run_epoch(
    objective: Objective,
    live: Params,
    fixed: Params,
    optimizer: BatchedOptimizer,
    data: ClientData,
    keys: torch.Tensor,
    epoch: int,
    batch_size: int,
) -> None:
    order = batch_order(keys, epoch, data.n, data.capacity)
    dropout_keys = rng.subkeys(keys, _DROPOUT)
    steps = math.ceil(int(data.n.max()) / batch_size)
    tensors = list(live.values())
    for step in range(steps):
        x, y, valid = data.batch(order[:, step * batch_size : (step + 1) * batch_size])
        count = valid.sum(1)
        dropout = Dropout(dropout_keys, epoch * STEPS_PER_EPOCH_LIMIT + step)
        if isinstance(objective, OwnStep):
            objective.own_step(live, fixed, x, y, valid, dropout)
            continue
        per_client = client_losses(objective, live | fixed, x, y, valid, dropout)
        grads = torch.autograd.grad(per_client.sum(), tensors)
        with torch.no_grad():
            optimizer.step(live, dict(zip(live, grads, strict=True)), count > 0)
            if isinstance(objective, AfterStep):
                objective.after_step(live, count > 0)
