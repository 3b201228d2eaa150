"""The fedmoe ServerApp: the configured methods driven over Flower messages.

1. **Join**: greet nodes until every client (``partition.clients``, or
   ``flower.min-nodes``) is identified or ``flower.join-timeout`` passes.
2. **Federate**: for each method with a federated phase, in the config's order, a
   :class:`~fedmoe.federation.FederationServer` decides which opt-in clients train in
   each round (the same seeded sampling as ``fedmoe run``); their nodes run the method's
   client update at K=1; every update is validated
   (:func:`~fedmoe.flower.records.params_from_record`) and the valid ones are
   aggregated by the method's hook, weighted by the training-set sizes the nodes
   declared at hello. The new server model is validated on every opt-in node's
   validation set; the server keeps the best model and stops early as configured. A
   round completes with the replies that arrive before ``flower.round-timeout``.
3. **Personalise**: every node, opt-out included, gets every federated method's best
   server model(s) and runs every method's personalisation in order, then evaluates
   them and reports accuracies only (:mod:`fedmoe.flower.exchange` says how long the
   server waits and whom it asks again).
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

from fedmoe.engine import Evaluation
from fedmoe.experiment.config import ExperimentConfig
from fedmoe.experiment.prepare import build_networks, resolve_device, run_spec
from fedmoe.experiment.results import write_results
from fedmoe.federation import FederationServer, Update, mean_validation, num_models
from fedmoe.flower.config import FlowerOptions, split_run_config
from fedmoe.flower.exchange import accepted, collect
from fedmoe.flower.log import FederationLog
from fedmoe.flower.messages import (
    BEST_ROUND,
    BEST_ROUNDS,
    EVALUATE,
    FEDERATED,
    METRICS,
    PERSONALISE,
    ROUND,
    SERVER,
    TRAIN,
    UPDATE,
    VALIDATE,
)
from fedmoe.flower.records import UpdateRejected, params_from_record, server_to_records
from fedmoe.flower.report import flower_results
from fedmoe.flower.roster import Roster, logger
from fedmoe.methods import registry
from fedmoe.methods.base import Federated, RunSpec
from fedmoe.models import Params

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured methods and write the results into ``flower.out``."""
    torch.set_num_threads(1)
    cfg, options = split_run_config(context.run_config)
    results = run_federation(grid, cfg, options)
    out = Path(options.out).expanduser().resolve()
    write_results(results, out)
    logger.info("fedmoe: results written to %s", out)


def _content(method: str, server: FederationServer, round_: int) -> RecordDict:
    records: dict[str, Any] = dict(server_to_records(server.params, SERVER))
    records[ROUND] = ConfigRecord(
        {"method": method, "round": round_, BEST_ROUND: server.best_round}
    )
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


def run_federation(grid: Grid, cfg: ExperimentConfig, options: FlowerOptions) -> dict[str, Any]:
    """The whole run over ``grid``; returns the results dict (see module doc)."""
    log = FederationLog()
    roster = Roster(grid, cfg.partition, options.poll_interval)
    with log.phase("join"):
        roster.join(options.min_nodes or cfg.partition.clients, options.join_timeout)
    ref = roster.first()
    net, gate_net, specialist_net = build_networks(cfg, ref.input_shape, ref.num_classes)
    device = resolve_device(cfg.device)
    run = run_spec(
        cfg, net, gate_net, ref.input_shape, ref.num_classes, device, None, specialist_net
    )
    opt_in = roster.opt_in_clients()
    if not opt_in:
        raise RuntimeError("no opt-in client joined: nobody can train a federated model")
    servers: dict[str, FederationServer] = {}
    for name in cfg.methods:
        hooks = registry.get(name).federated
        if hooks is None:
            continue
        opts = cfg.options(name)
        init = hooks.init(run, opts, device)
        server = FederationServer(init, np.asarray(opt_in), run.federation, cfg.seed)
        log.rounds[name] = []
        with log.phase(name):
            for round_ in range(run.federation.rounds):
                if _federated_round(roster, server, name, hooks, opts, run, round_, options, log):
                    break
        servers[name] = server
    content: dict[str, Any] = {}
    for name, server in servers.items():
        content |= server_to_records(server.best_params, f"{FEDERATED}.{name}")
    best_rounds = {name: server.best_round for name, server in servers.items()}
    content[BEST_ROUNDS] = ConfigRecord(dict(best_rounds.items()))
    with log.phase("personalise"):
        clients = {info.client for info in roster.nodes.values()}
        personalised = collect(
            roster,
            log,
            "personalise",
            clients,
            lambda c: (PERSONALISE, RecordDict(content)),
            options.personalise_timeout * len(cfg.methods),
            options.rejoin_timeout,
        )
    with log.phase("evaluate"):
        # A node keeps its personalised models in its own state: only the node that
        # personalised can evaluate, so there is no asking a new node again.
        evaluated_replies = collect(
            roster,
            log,
            "evaluate",
            personalised,
            lambda c: (EVALUATE, RecordDict()),
            options.personalise_timeout * len(cfg.methods),
            options.rejoin_timeout,
            retry=False,
        )
    evaluated = {c: (personalised[c], evaluated_replies[c]) for c in sorted(evaluated_replies)}
    if not evaluated:
        raise RuntimeError("no node reported personalised results")
    return flower_results(cfg, net, servers, roster, evaluated, log)


def _federated_round(
    roster: Roster,
    server: FederationServer,
    method: str,
    hooks: Federated,
    opts: Any,
    run: RunSpec,
    round_: int,
    options: FlowerOptions,
    log: FederationLog,
) -> bool:
    """One round of ``method``'s federated phase; returns True when early stopping says
    to stop."""
    models = num_models(server.params)
    reference = {name: p[:1] for name, p in server.params.items()}
    roster.discover(options.round_timeout)
    server.opt_in = np.asarray(roster.opt_in_clients())
    sampled = [int(c) for c in server.sample(round_)]
    nodes = roster.client_nodes()
    absent = [c for c in sampled if c not in nodes]
    content = _content(method, server, round_)
    replies = roster.exchange(
        method,
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
        why = accepted(reply)
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
                choice = _choice(reply, models)
            except (UpdateRejected, ValueError) as exc:
                why = str(exc)
        if why is not None:
            log.reject(method, round_, info, why)
            continue
        updates.append(update)
        weights.append(info.num_train)
        aggregated.append(client)
        chosen.append(choice)
    several = models > 1
    if updates:
        stacked = {name: torch.cat([u[name] for u in updates]) for name in server.params}
        picks = torch.tensor(chosen) if several else None
        server.params = hooks.aggregate(
            server.params, Update(stacked, picks), torch.tensor(weights, dtype=torch.int64)
        )
    else:
        logger.warning(
            "fedmoe: %s round %d: no valid update; the model is unchanged", method, round_
        )
    clusters = chosen if several else None
    validated: list[int] = []
    if server.validates(round_):
        loss, accuracy, validated = _validate(roster, server, method, round_, options, log)
        stop = server.record(round_, aggregated, loss, accuracy, clusters)
        checked = f"validation loss {loss:.4f}, accuracy {accuracy:.4f} on {len(validated)} clients"
    else:
        stop = server.record(round_, aggregated, clusters=clusters)
        checked = "no validation this round"
    log.rounds[method].append(
        {
            "round": round_,
            "sampled": sampled,
            "aggregated": aggregated,
            "absent": absent,
            "validated": validated,
        }
        | ({"clusters": chosen} if several else {})
    )
    logger.info(
        "fedmoe: %s round %d: aggregated %d of %d sampled clients; %s",
        method,
        round_,
        len(aggregated),
        len(sampled),
        checked,
    )
    return stop


def _choice(reply: Message, models: int) -> int:
    """The server model a node says it trained (0 with one model); ValueError unless it
    is one of the ``models``."""
    if models == 1:
        return 0
    value = _metric(reply, "choice")
    if value != int(value) or not 0 <= value < models:
        raise ValueError(f"trained server model {value:g}, not one of 0..{models - 1}")
    return int(value)


def _validate(
    roster: Roster,
    server: FederationServer,
    method: str,
    round_: int,
    options: FlowerOptions,
    log: FederationLog,
) -> tuple[float, float, list[int]]:
    """The server model's validation loss and accuracy over the opt-in nodes that reply,
    weighted by validation-set size (NaN when none replies)."""
    nodes = roster.client_nodes()
    clients = [c for c in roster.opt_in_clients() if c in nodes]
    content = _content(method, server, round_)
    phase = f"{method}-validate"
    replies = roster.exchange(
        phase, round_, {nodes[c]: (VALIDATE, content) for c in clients}, options.round_timeout
    )
    rows: list[tuple[float, float, float]] = []
    validated: list[int] = []
    for client in clients:
        info = roster.nodes[nodes[client]]
        reply = replies.get(info.node_id)
        why = accepted(reply, metrics_only=True)
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
        logger.warning("fedmoe: %s round %d: no validation reply", method, round_)
        return math.nan, math.nan, []
    values = torch.tensor(rows, dtype=torch.float64)
    return (*mean_validation(Evaluation(values[:, 0], values[:, 1], values[:, 2])), validated)
