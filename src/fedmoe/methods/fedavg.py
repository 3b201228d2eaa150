"""Federated averaging: a pure server policy plus the embedded simulator's driver.

:class:`FedAvgServer` holds the server's state and decisions (which clients train in a
round, how updates are averaged, when to stop, which global model is best). The
embedded simulator (:func:`federate`) drives it with the cohort engine; the Flower
ServerApp drives the same object with messages to real nodes.

With several global models (IFCA, Ghosh et al. 2020: the leading axis of the initial
parameters holds ``k`` cluster models) each sampled client trains the model with the
lowest loss on its training data, each model is the average of the updates of the
clients that chose it (a model no one chose is kept), and a client's validation loss is
that of its best model. One global model is plain FedAvg.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from fedmoe import rng
from fedmoe.engine import (
    Classifier,
    ClientData,
    EarlyStopping,
    Evaluation,
    TrainConfig,
    evaluate,
    train,
)
from fedmoe.engine.train import ProgressFn
from fedmoe.methods.params import broadcast, rows
from fedmoe.models import Network, Params


@dataclass(frozen=True)
class FedAvgConfig:
    """``rounds`` is an upper bound when early stopping is on. The global model is
    validated after every ``early_stopping.check_every``-th round (and the last one);
    ``patience`` counts those checks. Without early stopping it is validated every round
    and the best round is kept."""

    rounds: int
    clients_per_round: int
    local: TrainConfig
    early_stopping: EarlyStopping | None = None


def aggregate(updates: Params, weights: torch.Tensor) -> Params:
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


@dataclass
class RoundRecord:
    """What happened in one round (``val_*`` are ``None`` for rounds without a check)."""

    round: int
    clients: list[int]
    val_loss: float | None
    val_accuracy: float | None
    improved: bool
    #: With several global models, the model each of ``clients`` trained.
    clusters: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-able data (``clusters`` only with several models)."""
        out = asdict(self)
        if self.clusters is None:
            del out["clusters"]
        return out


@dataclass
class FedAvgServer:
    """FedAvg's server-side state: the current and best global model and the history."""

    params: Params
    opt_in: np.ndarray
    cfg: FedAvgConfig
    seed: int
    best_params: Params = field(init=False)
    best_loss: float = field(init=False, default=float("inf"))
    best_round: int = field(init=False, default=-1)
    history: list[RoundRecord] = field(init=False, default_factory=list)
    _wait: int = field(init=False, default=0)
    stopped: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if len(self.opt_in) == 0:
            raise ValueError("FedAvg needs at least one opt-in client")
        self.best_params = {n: p.clone() for n, p in self.params.items()}

    def sample(self, round_: int) -> np.ndarray:
        """The opt-in clients that train in ``round_`` (sorted), seeded by (seed, round)."""
        m = min(self.cfg.clients_per_round, len(self.opt_in))
        gen = np.random.default_rng([self.seed, rng.phase_id("fedavg/sample"), round_])
        return np.sort(gen.choice(self.opt_in, size=m, replace=False))

    def aggregate(
        self, updates: Params, weights: torch.Tensor, clusters: np.ndarray | None = None
    ) -> None:
        """Replace the global model by the weighted average of ``updates``; with several
        global models, each by the average of the updates of the clients that trained it
        (``clusters``: the model of each update)."""
        if clusters is None:
            self.params = aggregate(updates, weights)
            return
        models = []
        for j in range(num_models(self.params)):
            chosen = torch.as_tensor(np.flatnonzero(clusters == j), device=weights.device)
            if len(chosen) == 0:
                models.append(rows(self.params, torch.tensor([j], device=chosen.device)))
            else:
                models.append(aggregate(rows(updates, chosen), weights[chosen]))
        self.params = {n: torch.cat([m[n] for m in models]) for n in self.params}

    def validates(self, round_: int) -> bool:
        """Whether the global model is validated after ``round_``."""
        es = self.cfg.early_stopping
        return es is None or (round_ + 1) % es.check_every == 0 or round_ + 1 >= self.cfg.rounds

    def record(
        self,
        round_: int,
        clients: list[int],
        val_loss: float | None = None,
        val_accuracy: float | None = None,
        clusters: list[int] | None = None,
    ) -> bool:
        """Record ``round_``: its validation of the global model on check rounds (see
        :meth:`validates`), where a copy is kept if it is the best so far, and nothing else
        on the others. Returns ``True`` when training should stop (early stopping)."""
        if val_loss is None:
            self.history.append(RoundRecord(round_, clients, None, None, False, clusters))
            return self.stopped
        es = self.cfg.early_stopping
        delta = es.min_delta if es else 0.0
        improved = val_loss < self.best_loss - delta
        if improved or self.best_round < 0:
            self.best_params = {n: p.clone() for n, p in self.params.items()}
            self.best_loss, self.best_round = val_loss, round_
        self._wait = 0 if improved else self._wait + 1
        self.history.append(
            RoundRecord(round_, clients, val_loss, val_accuracy, improved, clusters)
        )
        self.stopped = es is not None and self._wait >= es.patience
        return self.stopped

    @property
    def next_round(self) -> int:
        """The round to run next (rounds recorded so far)."""
        return len(self.history)

    @property
    def finished(self) -> bool:
        """Early stopping fired, or every round has run."""
        return self.stopped or self.next_round >= self.cfg.rounds

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where the server is (for checkpoints)."""
        return {
            "params": self.params,
            "best_params": self.best_params,
            "best_loss": self.best_loss,
            "best_round": self.best_round,
            "history": [r.to_dict() for r in self.history],
            "wait": self._wait,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        self.params = state["params"]
        self.best_params = state["best_params"]
        self.best_loss = float(state["best_loss"])
        self.best_round = int(state["best_round"])
        self.history = [RoundRecord(**r) for r in state["history"]]
        self._wait = int(state["wait"])
        self.stopped = bool(state["stopped"])


def num_models(params: Params) -> int:
    """How many global models ``params`` stacks (its leading size)."""
    return int(next(iter(params.values())).shape[0])


@torch.no_grad()
def evaluate_each(objective: Classifier, params: Params, data: ClientData) -> Evaluation:
    """Each of ``params``'s global models evaluated on every client of ``data``:
    loss and accuracy ``(models, K)``."""
    device = next(iter(params.values())).device
    evs = [
        evaluate(objective, rows(params, torch.tensor([j], device=device)), data)
        for j in range(num_models(params))
    ]
    return Evaluation(
        torch.stack([e.loss for e in evs]), torch.stack([e.accuracy for e in evs]), data.n
    )


def best_models(objective: Classifier, params: Params, data: ClientData) -> torch.Tensor:
    """Each client's global model with the lowest loss on its ``data`` ``(K,)``."""
    return evaluate_each(objective, params, data).loss.argmin(0)


def _validate(objective: Classifier, params: Params, val: ClientData) -> tuple[float, float]:
    """Mean validation loss and accuracy over clients (weighted by examples), each client
    with its best global model."""
    if num_models(params) == 1:
        ev = evaluate(objective, params, val)
        loss, acc = ev.loss, ev.accuracy
    else:
        every = evaluate_each(objective, params, val)
        best = every.loss.argmin(0, keepdim=True)
        loss = every.loss.gather(0, best)[0]
        acc = every.accuracy.gather(0, best)[0]
    n = val.n.to(torch.float64)
    return float((loss * n).sum() / n.sum()), float((acc * n).sum() / n.sum())


@dataclass(frozen=True)
class FedAvgResult:
    """The best global model(s) (leading axis: one row per global model), its round,
    and the history."""

    params: Params
    best_round: int
    history: list[RoundRecord]


def federate(
    net: Network,
    init: Params,
    train_data: ClientData,
    val_data: ClientData,
    opt_in: np.ndarray,
    cfg: FedAvgConfig,
    seed: int,
    progress: ProgressFn | None = None,
    state: dict[str, Any] | None = None,
    on_round: Callable[[FedAvgServer], None] | None = None,
) -> FedAvgResult:
    """Run FedAvg in the embedded simulator: each round's sampled clients train as one
    cohort from the global model (with several, from the one each client picks); the
    global model is validated on all opt-in clients' validation sets on check rounds.

    ``state`` (a :meth:`FedAvgServer.state_dict`) resumes a run; every round's random
    draws depend only on (seed, round), so a resumed run equals an uninterrupted one.
    ``on_round`` is called with the server after every round (e.g. to checkpoint)."""
    server = FedAvgServer(init, np.asarray(opt_in, dtype=np.int64), cfg, seed)
    if state is not None:
        server.load_state_dict(state)
    objective = Classifier(net)
    device = init[next(iter(init))].device
    opt_in_t = torch.as_tensor(server.opt_in, device=device)
    opt_in_val = val_data.select(opt_in_t)
    while not server.finished:
        round_ = server.next_round
        clients = server.sample(round_)
        idx = torch.as_tensor(clients, device=device)
        keys = rng.client_keys(seed, idx.cpu(), f"fedavg/round/{round_}").to(device)
        cohort = train_data.select(idx)
        chosen: list[int] | None = None
        if num_models(server.params) == 1:
            start = broadcast(server.params, len(clients))
        else:
            best = best_models(objective, server.params, cohort)
            start = rows(server.params, best)
            chosen = best.tolist()
        result = train(objective, start, cohort, cfg.local, keys)
        server.aggregate(result.params, cohort.n, None if chosen is None else np.array(chosen))
        if server.validates(round_):
            loss, acc = _validate(objective, server.params, opt_in_val)
            server.record(round_, clients.tolist(), loss, acc, chosen)
        else:
            server.record(round_, clients.tolist(), clusters=chosen)
        if progress is not None:
            progress(round_ + 1, len(clients))
        if on_round is not None:
            on_round(server)
    return FedAvgResult(server.best_params, server.best_round, server.history)
