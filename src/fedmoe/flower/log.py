"""What the ServerApp records of a Flower run beyond the models: each round's clients,
the replies it dropped and why, and the time each phase took."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fedmoe.flower.roster import NodeInfo, logger


@dataclass
class Rejection:
    """A reply the server dropped, and why."""

    phase: str
    round: int
    client: int
    node_id: int
    reason: str


@dataclass
class FederationLog:
    """What happened, for the report."""

    #: Each federated method's rounds, by method name.
    rounds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)
    #: Clients whose personalised results were lost, and why.
    lost: dict[int, str] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)

    def reject(self, phase: str, round_: int, info: NodeInfo, reason: str) -> None:
        self.rejected.append(Rejection(phase, round_, info.client, info.node_id, reason))
        logger.warning(
            "fedmoe: %s round %d: dropped the reply of client %d (node %d): %s",
            phase,
            round_,
            info.client,
            info.node_id,
            reason,
        )

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        logger.info("fedmoe: phase %s", name)
        yield
        self.timing[name] = round(self.timing.get(name, 0.0) + time.perf_counter() - start, 3)
