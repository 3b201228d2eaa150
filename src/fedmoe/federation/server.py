"""The server's side of a federated phase, as a pure policy over explicit state.

:class:`FederationServer` holds the server model(s), the best copy, the history and the
early-stopping counter, and decides which opt-in clients train in a round. How updates
become the new model is the method's :meth:`~fedmoe.methods.base.Federated.aggregate`.
The embedded simulator (:mod:`fedmoe.federation.simulate`) and the Flower ServerApp
drive the same object.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from fedmoe import rng
from fedmoe.engine import EarlyStopping, Evaluation, TrainConfig
from fedmoe.models import Params


@dataclass(frozen=True)
class FederationConfig:
    """The federated phase every federating method shares: at most ``rounds`` rounds of
    ``clients_per_round`` sampled opt-in clients, each training with ``local``; the
    global model is validated after every ``early_stopping.check_every``-th round (and
    the last) and ``patience`` counts those checks. Without early stopping it is
    validated every round and the best round is kept."""

    rounds: int
    clients_per_round: int
    local: TrainConfig
    early_stopping: EarlyStopping | None = None


@dataclass
class RoundRecord:
    """What happened in one round (``val_*`` are ``None`` for rounds without a check)."""

    round: int
    clients: list[int]
    val_loss: float | None
    val_accuracy: float | None
    improved: bool
    #: With several server models, the model each of ``clients`` trained.
    clusters: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-able data (``clusters`` only with several models)."""
        out = asdict(self)
        if self.clusters is None:
            del out["clusters"]
        return out


def mean_validation(ev: Evaluation) -> tuple[float, float]:
    """Mean validation loss and accuracy over clients, weighted by their examples."""
    n = ev.n.to(torch.float64)
    return float((ev.loss * n).sum() / n.sum()), float((ev.accuracy * n).sum() / n.sum())


@dataclass
class FederationServer:
    """A federated phase's server-side state: the current and best model(s) and the
    history."""

    params: Params
    opt_in: np.ndarray
    cfg: FederationConfig
    seed: int
    best_params: Params = field(init=False)
    best_loss: float = field(init=False, default=float("inf"))
    best_round: int = field(init=False, default=-1)
    history: list[RoundRecord] = field(init=False, default_factory=list)
    _wait: int = field(init=False, default=0)
    stopped: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if len(self.opt_in) == 0:
            raise ValueError("a federated phase needs at least one opt-in client")
        self.best_params = {n: p.clone() for n, p in self.params.items()}

    def sample(self, round_: int) -> np.ndarray:
        """The opt-in clients that train in ``round_`` (sorted), seeded by (seed, round)."""
        m = min(self.cfg.clients_per_round, len(self.opt_in))
        gen = np.random.default_rng([self.seed, rng.phase_id("fedavg/sample"), round_])
        return np.sort(gen.choice(self.opt_in, size=m, replace=False))

    def validates(self, round_: int) -> bool:
        """Whether the server model is validated after ``round_``."""
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
        """Record ``round_``: its validation on check rounds (see :meth:`validates`),
        where a copy is kept if it is the best so far, and nothing else on the others.
        Returns ``True`` when training should stop: early stopping, or a diverged model
        (a non-finite validation loss beside a finite accuracy, so some client did reply:
        its parameters cannot come back, and the best round validated before is kept)."""
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
        replied = val_accuracy is not None and math.isfinite(val_accuracy)
        diverged = replied and not math.isfinite(val_loss)
        self.stopped = diverged or (es is not None and self._wait >= es.patience)
        return self.stopped

    @property
    def next_round(self) -> int:
        """The round to run next (rounds recorded so far)."""
        return len(self.history)

    @property
    def finished(self) -> bool:
        """Early stopping fired, or every round has run."""
        return self.stopped or self.next_round >= self.cfg.rounds

    def summary(self) -> dict[str, Any]:
        """The results.json ``federation`` entry."""
        history = []
        for r in self.history:
            row = r.to_dict()
            for key in ("val_loss", "val_accuracy"):
                if row[key] is not None and not math.isfinite(row[key]):
                    # Both: no node replied; the loss alone: the model diverged.
                    row[key] = None
            history.append(row)
        return {"best_round": self.best_round, "rounds_run": len(self.history), "history": history}

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
