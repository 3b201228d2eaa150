"""The fedmoe ClientApp: one client of the federation, on its own node.

It dispatches by method name to the same hooks the embedded simulator runs
(:mod:`fedmoe.flower.node`), at K = 1. Messages it answers (``message_type``), and what
it sends back (see :mod:`fedmoe.flower.messages` for the records):

- ``query.hello``: who it is (client id, opt-out, example counts, input shape, classes,
  majority classes, a digest of its partition rows): metadata only.
- ``train``: the named method's client update from the received server model(s); replies
  the update, its number of training examples and, where the method's clients pick one
  of several server models, which. State the method keeps on the client across rounds
  stays in ``context.state``. An opt-out node declines (a ``declined`` ConfigRecord, no
  parameters).
- ``evaluate``: the named method's validation score of the received server model(s)
  (metrics only); an opt-out node declines.
- ``train.personalise``: every method's personalisation, in the run's order, from the
  received best server models; the outputs stay in ``context.state``; replies epochs
  and validation losses only.
- ``evaluate.personalise``: evaluates the outputs kept in its state on its local test
  set and the global test set; replies accuracies, gate statistics and the methods'
  per-client numbers only.

Raw data never leaves the node. Every handler runs with one torch thread.
"""

from __future__ import annotations

import math

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    MetricRecordValues,
    RecordDict,
)
from flwr.clientapp import ClientApp

from fedmoe.errors import FedmoeError
from fedmoe.federation import State
from fedmoe.flower.config import node_options, split_run_config
from fedmoe.flower.messages import (
    BEST_ROUND,
    BEST_ROUNDS,
    DECLINED,
    FEDERATED,
    METRICS,
    NODE,
    PARTITION,
    ROUND,
    SERVER,
    STATE_PREFIX,
    UPDATE,
    VARIANTS,
)
from fedmoe.flower.node import Node
from fedmoe.flower.node_data import load_node_data
from fedmoe.flower.records import (
    number,
    params_to_record,
    server_from_content,
    state_from_record,
    state_to_record,
)
from fedmoe.methods.base import Output
from fedmoe.models import Params

app = ClientApp()

CLIENT_STATE = STATE_PREFIX + "client."
OUTPUT = STATE_PREFIX + "output."
#: A node's client state as of its last validation (``CHECKED``, with that round under
#: ``CHECKED_ROUND``) and as of the federation's best round (``BEST``): what the node
#: personalises from goes with the best server model, as in the simulator.
CHECKED = STATE_PREFIX + "checked."
CHECKED_ROUND = STATE_PREFIX + "checked-round."
BEST = STATE_PREFIX + "best."


def _node(context: Context) -> Node:
    torch.set_num_threads(1)
    cfg, _ = split_run_config(context.run_config)
    return Node.of(cfg, load_node_data(cfg, node_options(context.node_config)))


def _reply(msg: Message, records: dict[str, ArrayRecord | ConfigRecord | MetricRecord]) -> Message:
    metrics = records.get(METRICS)
    if isinstance(metrics, MetricRecord):
        metrics["threads"] = torch.get_num_threads()
    return Message(RecordDict(records), reply_to=msg)


def _declined(msg: Message) -> Message:
    return _reply(msg, {DECLINED: ConfigRecord({"reason": "opt-out"})})


def _round(msg: Message) -> tuple[str, int]:
    """The method and round a ``train`` / ``evaluate`` message is for."""
    if ROUND not in msg.content.config_records:
        raise FedmoeError("the message does not say which method and round it is for")
    record = msg.content.config_records[ROUND]
    method = record.get("method")
    if not isinstance(method, str):
        raise FedmoeError(f"the message names no method: {method!r}")
    return method, int(number(record.get("round"), "round"))


def _promote(context: Context, method: str, best_round: int) -> None:
    """Keep the state last validated as the best-round state if that round is the
    federation's best."""
    checked = context.state.config_records.get(CHECKED_ROUND + method)
    if checked is not None and int(number(checked.get("round"), "round")) == best_round:
        context.state[BEST + method] = context.state.array_records[CHECKED + method]


def _best_state(context: Context, method: str, best_round: int, device: torch.device) -> State:
    """This node's client state of ``method`` at the federation's best round (``{}``:
    the method's initial state)."""
    _promote(context, method, best_round)
    return _state(context, BEST + method, device)


def _server(node: Node, content: RecordDict, method: str, name: str = SERVER) -> Params:
    return server_from_content(content, name, node.server_reference(method))


def _state(context: Context, key: str, device: torch.device) -> State:
    record = context.state.array_records.get(key)
    return {} if record is None else state_from_record(record, device)


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    """Say who this node is (metadata only)."""
    d = _node(context).data
    info = ConfigRecord(
        {
            "client": d.client,
            "opt-out": d.opt_out,
            "num-train": int(d.train.n[0]),
            "num-val": int(d.val.n[0]),
            "num-test": int(d.test.n[0]),
            "input-shape": list(d.input_shape),
            "num-classes": d.num_classes,
            "majority": list(d.majority),
            "dataset": d.dataset,
            "source": d.source,
            "scheme": d.scheme,
            "digest": d.digest,
            "threads": torch.get_num_threads(),
        }
    )
    return _reply(msg, {NODE: info, PARTITION: ConfigRecord(dict(d.partition_params))})


@app.train()
def fit(msg: Message, context: Context) -> Message:
    """The named method's client update (declined by an opt-out node)."""
    node = _node(context)
    if node.data.opt_out:
        return _declined(msg)
    method, round_ = _round(msg)
    server = _server(node, msg.content, method)
    key = CLIENT_STATE + method
    update = node.update(method, server, round_, _state(context, key, node.clients.device))
    if update.state:
        context.state[key] = state_to_record(update.state)
    metrics = MetricRecord({"num-examples": int(node.data.train.n[0])})
    if update.choice is not None:
        metrics["choice"] = int(update.choice[0])
    return _reply(msg, {UPDATE: params_to_record(update.params), METRICS: metrics})


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """The named method's validation score of the server model(s) (declined by an
    opt-out node)."""
    node = _node(context)
    if node.data.opt_out:
        return _declined(msg)
    method, round_ = _round(msg)
    best_round = int(number(msg.content.config_records[ROUND].get(BEST_ROUND, -1), BEST_ROUND))
    _promote(context, method, best_round)
    state = _state(context, CLIENT_STATE + method, node.clients.device)
    ev = node.validate(method, _server(node, msg.content, method), state)
    if state:
        context.state[CHECKED + method] = state_to_record(state)
        context.state[CHECKED_ROUND + method] = ConfigRecord({"round": round_})
    metrics = MetricRecord(
        {"loss": float(ev.loss[0]), "accuracy": float(ev.accuracy[0]), "num-examples": int(ev.n[0])}
    )
    return _reply(msg, {METRICS: metrics})


@app.train("personalise")
def personalise_models(msg: Message, context: Context) -> Message:
    """Every method's personalisation; the outputs stay in this node's state, metrics
    go back."""
    node = _node(context)
    device = node.clients.device
    federated = [m for m in node.cfg.methods if node.method(m)[0].federated is not None]
    best = {m: _server(node, msg.content, m, f"{FEDERATED}.{m}") for m in federated}
    rounds = msg.content.config_records.get(BEST_ROUNDS, ConfigRecord())
    states = {
        m: _best_state(context, m, int(number(rounds.get(m, -1), BEST_ROUNDS)), device)
        for m in federated
    }
    outputs = node.personalise(best, states)
    values: dict[str, MetricRecordValues] = {}
    for name, output in outputs.items():
        context.state[OUTPUT + name] = state_to_record(output.state)
        if output.epochs is not None:
            values[f"{name}.epochs"] = int(output.epochs[0])
        if output.best_loss is not None and math.isfinite(float(output.best_loss[0])):
            values[f"{name}.best-loss"] = float(output.best_loss[0])
    return _reply(msg, {METRICS: MetricRecord(values)})


@app.evaluate("personalise")
def evaluate_personalised(msg: Message, context: Context) -> Message:
    """Evaluate the outputs kept in this node's state (metrics only)."""
    node = _node(context)
    missing = [m for m in node.cfg.methods if OUTPUT + m not in context.state.array_records]
    if missing:
        raise FedmoeError(
            f"this node holds no personalised {', '.join(missing)} for this run; personalise first"
        )
    device = node.clients.device
    outputs = {m: Output(_state(context, OUTPUT + m, device)) for m in node.cfg.methods}
    scores = node.evaluate(outputs)
    values: dict[str, float] = {}
    labels: dict[str, list[str]] = {}
    for name, splits in scores.items():
        for split, s in splits.items():
            values |= s.flat(f"{name}.{split}.")
        if splits["local_test"].variants:
            labels[name] = list(splits["local_test"].variants)
    metrics = MetricRecord(dict(values.items()))
    return _reply(msg, {METRICS: metrics, VARIANTS: ConfigRecord(dict(labels.items()))})
