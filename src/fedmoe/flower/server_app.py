"""The fedmoe ServerApp: the paper's protocol driven over Flower messages.

1. **Join**: greet nodes until every client (``partition.clients``, or
   ``flower.min-nodes``) is identified or ``flower.join-timeout`` passes.
2. **Federate**: fedmoe's :class:`~fedmoe.methods.FedAvgServer` decides which opt-in
   clients train in each round (same seeded sampling as ``fedmoe run``); their nodes
   get the global model and train at K=1; every update is validated
   (:func:`~fedmoe.flower.records.params_from_record`) and the valid ones are averaged by
   :func:`fedmoe.methods.aggregate`, weighted by the training-set sizes the nodes
   declared at hello. The new global model is validated on every opt-in node's
   validation set; the server keeps the best model and stops early as configured.
   A round completes with the replies that arrive before ``flower.round-timeout``.
   With ``clustered.enabled``, a second federated phase trains IFCA's cluster models
   the same way: sampled nodes get every cluster model, train the one with the lowest
   loss on their training data and say which; each model averages the updates of the
   nodes that chose it; validation scores each node with its best model.
3. **Personalise**: every node, opt-out included, gets the best global model (and the
   best cluster models) and builds FT, Local and MoE (and MoE+, IFCA's pick and
   ``moe-ifca`` as configured); then evaluates them and reports accuracies only.
4. **Report**: ``results.json`` / ``results.md`` / ``config.toml`` as ``fedmoe run``
   writes them (see :mod:`fedmoe.flower.report`), into ``flower.out``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedmoe.experiment.config import ExperimentConfig
from fedmoe.experiment.protocol import (
    build_networks,
    fedavg_config,
    global_init,
    resolve_device,
    torch_dtype,
)
from fedmoe.experiment.results import write_results
from fedmoe.flower.config import FlowerOptions, split_run_config
from fedmoe.flower.log import FederationLog
from fedmoe.flower.messages import (
    CLUSTERS,
    DECLINED,
    EVALUATE,
    FEDAVG,
    GLOBAL,
    METRICS,
    PERSONALISE,
    TRAIN,
    UPDATE,
    VALIDATE,
)
from fedmoe.flower.records import (
    UpdateRejected,
    count_arrays,
    models_to_records,
    params_from_record,
    params_to_record,
)
from fedmoe.flower.report import flower_results
from fedmoe.flower.roster import Roster, logger
from fedmoe.methods import FedAvgServer
from fedmoe.methods.fedavg import num_models
from fedmoe.models import Params

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the protocol and write the results into ``flower.out``."""
    torch.set_num_threads(1)
    cfg, options = split_run_config(context.run_config)
    results = run_federation(grid, cfg, options)
    out = Path(options.out).expanduser().resolve()
    write_results(results, out)
    logger.info("fedmoe: results written to %s", out)


def _content(params: Params, round_: int | None = None) -> RecordDict:
    """One global model as ``global``, several (IFCA's) as ``clusters.<j>``."""
    if num_models(params) == 1:
        records: dict[str, Any] = {GLOBAL: params_to_record(params)}
    else:
        records = dict(models_to_records(params, CLUSTERS))
    if round_ is not None:
        records[FEDAVG] = ConfigRecord({"round": round_})
    return RecordDict(records)


def _metric(reply: Message, key: str) -> float:
    """A numeric metric of a reply; ValueError when missing or not a finite number."""
    records = reply.content.metric_records
    if METRICS not in records or key not in records[METRICS]:
        raise ValueError(f"reply lacks metric {key!r}")
    value = records[METRICS][key]
    if isinstance(value, list) or not math.isfinite(float(value)):
        raise ValueError(f"metric {key!r} is not a finite number: {value!r}")
    return float(value)


def _accepted(reply: Message | None, metrics_only: bool = False) -> str | None:
    """None if the reply can be used, else why not (no reply, error, declined, or
    parameters where only metrics may come back)."""
    if reply is None:
        return "no reply before the timeout"
    if reply.has_error():
        return f"node error: {reply.error.reason}"
    if DECLINED in reply.content.config_records:
        reason = reply.content.config_records[DECLINED].get("reason", "")
        return f"declined ({reason!s})"
    if metrics_only and count_arrays(reply.content)[0]:
        return "sent parameters where only metrics may come back"
    return None


def run_federation(grid: Grid, cfg: ExperimentConfig, options: FlowerOptions) -> dict[str, Any]:
    """The whole protocol over ``grid``; returns the results dict (see module doc)."""
    log = FederationLog()
    roster = Roster(grid, cfg.partition, options.poll_interval)
    with log.phase("join"):
        roster.join(options.min_nodes or cfg.partition.clients, options.join_timeout)
    ref = roster.first()
    net, _ = build_networks(cfg, ref.input_shape, ref.num_classes)
    device = resolve_device(cfg.device)
    fcfg = fedavg_config(cfg)
    opt_in = roster.opt_in_clients()
    if not opt_in:
        raise RuntimeError("no opt-in client joined: nobody can train the global model")
    server = FedAvgServer(global_init(cfg, net, device), np.asarray(opt_in), fcfg, cfg.seed)
    with log.phase("federate"):
        for round_ in range(fcfg.rounds):
            if _federated_round(roster, server, round_, options, log):
                break
    clustered = None
    if cfg.clustered.enabled:
        clusters = torch.arange(cfg.clustered.models)
        init = net.init(cfg.seed, clusters, "clustered/init", torch_dtype(cfg), device)
        clustered = FedAvgServer(init, np.asarray(opt_in), fcfg, cfg.seed)
        with log.phase("clustered"):
            for round_ in range(fcfg.rounds):
                if _federated_round(roster, clustered, round_, options, log):
                    break
    with log.phase("personalise"):
        roster.discover(options.round_timeout)
        targets = roster.client_nodes()
        content = _content(server.best_params)
        if clustered is not None:
            for key, record in models_to_records(clustered.best_params, CLUSTERS).items():
                content[key] = record
        replies = roster.exchange(
            "personalise",
            -1,
            {nid: (PERSONALISE, content) for nid in targets.values()},
            options.personalise_timeout,
        )
        personalised: dict[int, Message] = {}
        for client, nid in sorted(targets.items()):
            why = _accepted(replies.get(nid), metrics_only=True)
            if why is None:
                personalised[client] = replies[nid]
            else:
                log.reject("personalise", -1, roster.nodes[nid], why)
    with log.phase("evaluate"):
        replies = roster.exchange(
            "evaluate",
            -1,
            {targets[c]: (EVALUATE, RecordDict()) for c in personalised},
            options.personalise_timeout,
        )
        evaluated: dict[int, tuple[Message, Message]] = {}
        for client in personalised:
            nid = targets[client]
            why = _accepted(replies.get(nid), metrics_only=True)
            if why is None:
                evaluated[client] = (personalised[client], replies[nid])
            else:
                log.reject("evaluate", -1, roster.nodes[nid], why)
    if not evaluated:
        raise RuntimeError("no node reported personalised results")
    return flower_results(cfg, net, server, clustered, roster, evaluated, log)


def _federated_round(
    roster: Roster,
    server: FedAvgServer,
    round_: int,
    options: FlowerOptions,
    log: FederationLog,
) -> bool:
    """One FedAvg round (of IFCA's, when ``server`` holds several models); returns True
    when early stopping says to stop."""
    models = num_models(server.params)
    clustered = models > 1
    phase, rounds = ("clustered", log.cluster_rounds) if clustered else ("train", log.rounds)
    reference = {name: p[:1] for name, p in server.params.items()}
    roster.discover(options.round_timeout)
    server.opt_in = np.asarray(roster.opt_in_clients())
    sampled = [int(c) for c in server.sample(round_)]
    nodes = roster.client_nodes()
    absent = [c for c in sampled if c not in nodes]
    content = _content(server.params, round_)
    replies = roster.exchange(
        phase,
        round_,
        {nodes[c]: (TRAIN, content) for c in sampled if c in nodes},
        options.round_timeout,
    )
    updates: list[Params] = []
    weights: list[int] = []
    aggregated: list[int] = []
    chosen: list[int] = []
    for client in sampled:
        if client not in nodes:
            continue
        info = roster.nodes[nodes[client]]
        reply = replies.get(info.node_id)
        why = _accepted(reply)
        if why is None and reply is not None:
            try:
                if UPDATE not in reply.content.array_records:
                    raise UpdateRejected("no update in the reply")
                update = params_from_record(reply.content.array_records[UPDATE], reference)
                n = _metric(reply, "num-examples")
                if n != info.num_train:
                    raise UpdateRejected(
                        f"reports {n:g} training examples but declared {info.num_train}"
                    )
                cluster = _cluster(reply, models)
            except (UpdateRejected, ValueError) as exc:
                why = str(exc)
        if why is not None:
            log.reject(phase, round_, info, why)
            continue
        updates.append(update)
        weights.append(info.num_train)
        aggregated.append(client)
        chosen.append(cluster)
    clusters = chosen if clustered else None
    if updates:
        stacked = {name: torch.cat([u[name] for u in updates]) for name in server.params}
        server.aggregate(
            stacked,
            torch.tensor(weights, dtype=torch.int64),
            np.asarray(chosen) if clustered else None,
        )
    else:
        logger.warning("fedmoe: round %d: no valid update; the global model is unchanged", round_)
    validated: list[int] = []
    if server.validates(round_):
        loss, accuracy, validated = _validate(roster, server, round_, options, log)
        stop = server.record(round_, aggregated, loss, accuracy, clusters)
        checked = f"validation loss {loss:.4f}, accuracy {accuracy:.4f} on {len(validated)} clients"
    else:
        stop = server.record(round_, aggregated, clusters=clusters)
        checked = "no validation this round"
    rounds.append(
        {
            "round": round_,
            "sampled": sampled,
            "aggregated": aggregated,
            "absent": absent,
            "validated": validated,
        }
        | ({"clusters": chosen} if clustered else {})
    )
    logger.info(
        "fedmoe: %sround %d: aggregated %d of %d sampled clients; %s",
        "clustered " if clustered else "",
        round_,
        len(aggregated),
        len(sampled),
        checked,
    )
    return stop


def _cluster(reply: Message, models: int) -> int:
    """The cluster model a node says it trained (0 with one global model); ValueError
    unless it is one of the ``models``."""
    if models == 1:
        return 0
    value = _metric(reply, "cluster")
    if value != int(value) or not 0 <= value < models:
        raise ValueError(f"trained cluster model {value:g}, not one of 0..{models - 1}")
    return int(value)


def _validate(
    roster: Roster,
    server: FedAvgServer,
    round_: int,
    options: FlowerOptions,
    log: FederationLog,
) -> tuple[float, float, list[int]]:
    """The global model's validation loss and accuracy over the opt-in nodes that reply,
    weighted by validation-set size (NaN when none replies)."""
    nodes = roster.client_nodes()
    clients = [c for c in roster.opt_in_clients() if c in nodes]
    content = _content(server.params, round_)
    phase = "validate" if num_models(server.params) == 1 else "clustered-validate"
    replies = roster.exchange(
        phase,
        round_,
        {nodes[c]: (VALIDATE, content) for c in clients},
        options.round_timeout,
    )
    rows: list[tuple[float, float, float]] = []
    validated: list[int] = []
    for client in clients:
        info = roster.nodes[nodes[client]]
        reply = replies.get(info.node_id)
        why = _accepted(reply, metrics_only=True)
        if why is None and reply is not None:
            try:
                row = (
                    _metric(reply, "loss"),
                    _metric(reply, "accuracy"),
                    _metric(reply, "num-examples"),
                )
                if row[2] != info.num_val:
                    raise ValueError(f"validated on {row[2]:g} examples, declared {info.num_val}")
                rows.append(row)
                validated.append(client)
            except ValueError as exc:
                why = str(exc)
        if why is not None:
            log.reject(phase, round_, info, why)
    if not rows:
        logger.warning("fedmoe: round %d: no validation reply", round_)
        return math.nan, math.nan, []
    values = torch.tensor(rows, dtype=torch.float64)
    n = values[:, 2]
    loss = float((values[:, 0] * n).sum() / n.sum())
    accuracy = float((values[:, 1] * n).sum() / n.sum())
    return loss, accuracy, validated
