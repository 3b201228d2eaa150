"""The Flower run's results, in the same format as ``fedmoe run`` writes.

Every key :func:`fedmoe.experiment.run.run_experiment` returns is here with the same
meaning (docs/results-format.md); per-client lists follow ``clients`` (the clients that
reported their personalised results, sorted), which is every client unless nodes died
or were refused. The ``flower`` section adds what only a distributed run has: the nodes,
each federated method's rounds (sampled / aggregated / absent clients), the dropped
replies with their reasons, the clients lost on the way and why, and the audit of every
message the server received.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flwr
import torch
from flwr.app import Message

import fedmoe
from fedmoe.experiment.config import ExperimentConfig, to_dict
from fedmoe.experiment.entries import SPLITS, Scores, method_entry
from fedmoe.experiment.provenance import versions
from fedmoe.federation import FederationServer
from fedmoe.flower.log import FederationLog
from fedmoe.flower.messages import METRICS, VARIANTS
from fedmoe.flower.records import number
from fedmoe.flower.roster import Roster
from fedmoe.methods import registry
from fedmoe.models import Model


def _numbers(reply: Message) -> dict[str, float]:
    return {k: number(v, k) for k, v in reply.content.metric_records[METRICS].items()}


def _variants(reply: Message, method: str) -> list[str]:
    record = reply.content.config_records.get(VARIANTS)
    labels = [] if record is None else record.get(method, [])
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
        raise ValueError(f"the {method} variant labels are malformed: {labels!r}")
    return [str(v) for v in labels]


def _entries(
    cfg: ExperimentConfig,
    servers: dict[str, FederationServer],
    clients: list[int],
    evaluated: dict[int, tuple[Message, Message]],
) -> dict[str, Any]:
    trained = {c: _numbers(evaluated[c][0]) for c in clients}
    scored = {c: _numbers(evaluated[c][1]) for c in clients}
    methods: dict[str, Any] = {}
    for name in cfg.methods:
        method = registry.get(name)
        splits = {}
        for split in SPLITS:
            parts = [
                Scores.from_flat(scored[c], _variants(evaluated[c][1], name), f"{name}.{split}.")
                for c in clients
            ]
            splits[split] = Scores.concat(parts)
        has_epochs = all(f"{name}.epochs" in trained[c] for c in clients)
        epochs = [int(trained[c][f"{name}.epochs"]) for c in clients] if has_epochs else None
        info = {"federation": servers[name].summary()} if name in servers else {}
        methods[name] = method_entry(method, cfg.options(name), splits, epochs, info)
    return methods


def flower_results(
    cfg: ExperimentConfig,
    net: Model,
    servers: dict[str, FederationServer],
    roster: Roster,
    evaluated: dict[int, tuple[Message, Message]],
    log: FederationLog,
) -> dict[str, Any]:
    """Assemble the results dict. ``servers``: each federated method's server;
    ``evaluated``: client -> (personalise reply, evaluate reply) of the clients that
    completed the run."""
    clients = sorted(evaluated)
    infos = [roster.info(c) for c in clients]
    ref = roster.first()
    lost = sorted({i.client for i in roster.nodes.values()} - set(clients))
    return {
        "format": 2,
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
        "partition": {
            "scheme": ref.scheme,
            "params": dict(ref.partition_params),
            "opt_out": [i is not None and i.opt_out for i in infos],
            "majority": [[] if i is None else list(i.majority) for i in infos],
        },
        "clients": clients,
        "methods": _entries(cfg, servers, clients, evaluated),
        "timing_s": log.timing,
        "versions": versions(flwr=flwr.__version__),
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
            "rejected": [dataclasses.asdict(r) for r in log.rejected],
            "refused_nodes": {str(n): r for n, r in roster.refused.items()},
            "lost_clients": lost,
            "lost_reasons": {str(c): log.lost.get(c, "unknown") for c in lost},
            "audit": roster.audit_log(),
        },
    }
