"""The Flower run's results, in the same format as ``fedmoe run`` writes.

Every key :func:`fedmoe.experiment.protocol.run_experiment` returns is here with the
same meaning; per-client lists follow ``clients`` (the clients that reported their
personalised results, sorted), which is every client unless nodes died or were refused.
The ``flower`` section adds what only a distributed run has: the nodes, each round's
sampled / aggregated / absent clients, the dropped replies with their reasons, the
clients lost on the way, and the audit of every message the server received.
"""

from __future__ import annotations

import dataclasses
import math
import platform
from typing import Any

import flwr
import numpy as np
import torch
from flwr.app import Message

import fedmoe
from fedmoe.experiment.config import ExperimentConfig, to_dict
from fedmoe.experiment.protocol import METHODS
from fedmoe.experiment.summary import summarise
from fedmoe.flower.log import FederationLog
from fedmoe.flower.messages import METRICS
from fedmoe.flower.node import GATE_GROUPS, IFCA, MOE_IFCA, MOE_PLUS, PERSONALISED, SPLITS
from fedmoe.flower.records import number
from fedmoe.flower.roster import Roster
from fedmoe.methods import FedAvgServer
from fedmoe.models import Network


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _numbers(reply: Message) -> dict[str, float]:
    return {k: number(v, k) for k, v in reply.content.metric_records[METRICS].items()}


def flower_results(
    cfg: ExperimentConfig,
    net: Network,
    server: FedAvgServer,
    clustered: FedAvgServer | None,
    roster: Roster,
    evaluated: dict[int, tuple[Message, Message]],
    log: FederationLog,
) -> dict[str, Any]:
    """Assemble the results dict. ``server``: FedAvg's, ``clustered``: IFCA's (with
    ``clustered.enabled``); ``evaluated``: client -> (personalise reply, evaluate reply)
    of the clients that completed the protocol."""
    clients = sorted(evaluated)
    infos = [roster.info(c) for c in clients]
    metrics = {c: _numbers(evaluated[c][1]) for c in clients}
    trained = {c: _numbers(evaluated[c][0]) for c in clients}

    def column(key: str) -> torch.Tensor:
        return torch.tensor([metrics[c][key] for c in clients], dtype=torch.float64)

    added = [MOE_PLUS] if cfg.moe_plus.enabled else []
    fitted = [*added, MOE_IFCA] if clustered is not None else added
    names = [*METHODS, *added, *([IFCA, MOE_IFCA] if clustered is not None else [])]
    methods = {
        name: {split: summarise(column(f"{name}.{split}")) for split in SPLITS} for name in names
    }

    def gate(prefix: str) -> dict[str, Any]:
        return {
            split: {
                group: [_finite_or_none(metrics[c][f"{prefix}.{split}.{group}"]) for c in clients]
                for group in GATE_GROUPS
            }
            for split in SPLITS
        }

    extra: dict[str, Any] = {"gate_plus": gate("gate-plus")} if cfg.moe_plus.enabled else {}
    if clustered is not None:
        chosen = [int(trained[c][f"{IFCA}.model"]) for c in clients]
        extra["gate_ifca"] = gate("gate-ifca")
        extra["clustered"] = {
            "models": cfg.clustered.models,
            "best_round": clustered.best_round,
            "rounds_run": len(clustered.history),
            "clients_per_model": np.bincount(chosen, minlength=cfg.clustered.models).tolist(),
            "model_of_client": chosen,
        }
    ref = roster.first()
    lost = sorted({i.client for i in roster.nodes.values()} - set(clients))
    return {
        "fedmoe_version": fedmoe.__version__,
        "engine": "flower",
        "config": to_dict(cfg),
        "dataset": {
            "name": ref.dataset,
            "source": ref.source,
            "num_classes": ref.num_classes,
            "model": net.name,
            "model_params": net.num_params(),
        },
        "clients": clients,
        "partition": {
            "scheme": ref.scheme,
            "params": dict(ref.partition_params),
            "opt_out": [i is not None and i.opt_out for i in infos],
            "majority": [[] if i is None else list(i.majority) for i in infos],
        },
        "moe_pool": cfg.personalise.pool,
        "methods": methods,
        "gate": gate("gate"),
        "fedavg": {
            "best_round": server.best_round,
            "rounds_run": len(server.history),
            "history": [
                {
                    "round": r.round,
                    "val_loss": _finite_or_none(r.val_loss),
                    "val_accuracy": _finite_or_none(r.val_accuracy),
                    "clients": r.clients,
                    "improved": r.improved,
                }
                for r in server.history
            ],
        },
        "epochs": {
            name: [int(trained[c][f"epochs.{name}"]) for c in clients]
            for name in (*PERSONALISED, *fitted)
        },
        **extra,
        "timing_s": log.timing,
        "versions": {
            "fedmoe": fedmoe.__version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "flwr": flwr.__version__,
        },
        "threads": torch.get_num_threads(),
        "device": cfg.device,
        "flower": {
            "nodes": [
                {
                    "client": i.client,
                    "node_id": i.node_id,
                    "opt_out": i.opt_out,
                    "num_train": i.num_train,
                    "num_val": i.num_val,
                    "num_test": i.num_test,
                    "digest": i.digest,
                }
                for i in sorted(roster.nodes.values(), key=lambda i: i.client)
            ],
            "client_threads": {str(c): t for c, t in sorted(roster.threads.items())},
            "rounds": log.rounds,
            **({"cluster_rounds": log.cluster_rounds} if clustered is not None else {}),
            "rejected": [dataclasses.asdict(r) for r in log.rejected],
            "refused_nodes": {str(n): r for n, r in roster.refused.items()},
            "lost_clients": lost,
            "audit": roster.audit_log(),
        },
    }
