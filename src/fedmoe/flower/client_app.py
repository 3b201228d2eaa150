"""The fedmoe ClientApp: one client of the federation, on its own node.

Messages it answers (``message_type``), and what it sends back:

- ``query.hello``: who it is (client id, opt-out, example counts, input shape, classes,
  majority classes, a digest of its partition rows): metadata only.
- ``train``: FedAvg local training from the received global model at K=1; replies the
  updated model and its number of training examples. An opt-out node declines (a
  ``declined`` ConfigRecord, no parameters).
- ``evaluate``: the received global model's loss and accuracy on its validation set
  (metrics only); an opt-out node declines.
- ``train.personalise``: FT, Local and MoE (and MoE+ with ``moe_plus.enabled``) from
  the received (best) global model; the models, the mixtures' specialist and gates
  included, stay in the node's state (``context.state``); replies epochs and validation
  losses only.
- ``evaluate.personalise``: evaluates the models kept in its state on its local test
  set and the global test set; replies accuracies and gate statistics only.

Raw data never leaves the node. Every handler runs with one torch thread.
"""

from __future__ import annotations

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
from fedmoe.experiment.config import ExperimentConfig
from fedmoe.experiment.protocol import build_networks, torch_dtype
from fedmoe.flower.config import node_options, split_run_config
from fedmoe.flower.messages import (
    DECLINED,
    FEDAVG,
    GLOBAL,
    METRICS,
    NODE,
    PARTITION,
    STATE_PREFIX,
    UPDATE,
)
from fedmoe.flower.node import (
    MOE_PLUS,
    Personalised,
    evaluate_models,
    local_update,
    mixture_reference,
    moe_plus_net,
    moe_plus_reference,
    personalise,
    reference_params,
    restore_moe_plus,
    validate,
)
from fedmoe.flower.node_data import NodeData, load_node_data
from fedmoe.flower.records import number, params_from_record, params_to_record
from fedmoe.methods.gating import FittedGate
from fedmoe.models import Network, Params

app = ClientApp()


class _Node:
    """A handler's view of the node: run config, data and networks."""

    def __init__(self, context: Context) -> None:
        torch.set_num_threads(1)
        self.cfg: ExperimentConfig
        self.cfg, _ = split_run_config(context.run_config)
        self.data: NodeData = load_node_data(self.cfg, node_options(context.node_config))
        self.net: Network
        self.gate_net: Network
        self.net, self.gate_net = build_networks(
            self.cfg, self.data.input_shape, self.data.num_classes
        )
        self.dtype = torch_dtype(self.cfg)
        self.device = self.data.train.x.device

    def global_params(self, content: RecordDict) -> Params:
        if GLOBAL not in content.array_records:
            raise FedmoeError("the message carries no global model")
        reference = reference_params(self.net, self.dtype, self.device)
        return params_from_record(content.array_records[GLOBAL], reference)


def _reply(msg: Message, records: dict[str, ArrayRecord | ConfigRecord | MetricRecord]) -> Message:
    metrics = records.get(METRICS)
    if isinstance(metrics, MetricRecord):
        metrics["threads"] = torch.get_num_threads()
    return Message(RecordDict(records), reply_to=msg)


def _declined(msg: Message) -> Message:
    return _reply(msg, {DECLINED: ConfigRecord({"reason": "opt-out"})})


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    """Say who this node is (metadata only)."""
    node = _Node(context)
    d = node.data
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
    """FedAvg local training (declined by an opt-out node)."""
    node = _Node(context)
    if node.data.opt_out:
        return _declined(msg)
    round_ = int(number(msg.content.config_records[FEDAVG].get("round"), "round"))
    update = local_update(node.cfg, node.data, node.net, node.global_params(msg.content), round_)
    metrics = MetricRecord({"num-examples": int(node.data.train.n[0])})
    return _reply(msg, {UPDATE: params_to_record(update), METRICS: metrics})


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """The global model on this client's validation set (declined by an opt-out node)."""
    node = _Node(context)
    if node.data.opt_out:
        return _declined(msg)
    loss, accuracy, n = validate(node.net, node.global_params(msg.content), node.data)
    metrics = MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": n})
    return _reply(msg, {METRICS: metrics})


@app.train("personalise")
def personalise_models(msg: Message, context: Context) -> Message:
    """FT, Local and MoE; the models stay in this node's state, metrics go back."""
    node = _Node(context)
    global_params = node.global_params(msg.content)
    models = personalise(node.cfg, node.data, node.net, node.gate_net, global_params)
    state = context.state
    state[STATE_PREFIX + "global"] = params_to_record(global_params)
    for name in ("finetune", "local", "moe"):
        state[STATE_PREFIX + name] = params_to_record(getattr(models, name))
    state[STATE_PREFIX + "epochs"] = MetricRecord(dict(models.epochs))
    if models.moe_plus is not None:
        plus = models.moe_plus
        state[STATE_PREFIX + MOE_PLUS] = params_to_record(plus.params)
        temperatures: dict[str, MetricRecordValues] = {
            "specialist": float(plus.t_specialist[0]),
            "global": float(plus.t_global[0]),
        }
        state[STATE_PREFIX + MOE_PLUS + ".temperature"] = MetricRecord(temperatures)
    values: dict[str, MetricRecordValues] = {f"epochs.{k}": v for k, v in models.epochs.items()}
    values |= {f"best-loss.{k}": v for k, v in models.best_loss.items()}
    return _reply(msg, {METRICS: MetricRecord(values)})


@app.evaluate("personalise")
def evaluate_personalised(msg: Message, context: Context) -> Message:
    """Evaluate the models kept in this node's state (metrics only)."""
    node = _Node(context)
    state = context.state
    names = ("global", "finetune", "local", "moe")
    if any(STATE_PREFIX + n not in state.array_records for n in names):
        raise FedmoeError("this node holds no personalised models for this run; personalise first")
    ref = reference_params(node.net, node.dtype, node.device)
    mix_ref = mixture_reference(node.net, node.gate_net, node.dtype, node.device)
    stored = {
        n: params_from_record(state.array_records[STATE_PREFIX + n], mix_ref if n == "moe" else ref)
        for n in names
    }
    epochs = {
        k: int(number(v, k)) for k, v in state.metric_records[STATE_PREFIX + "epochs"].items()
    }
    plus = None
    if node.cfg.moe_plus.enabled:
        plus = _restore_moe_plus(node, state, epochs[MOE_PLUS])
    models = Personalised(
        finetune=stored["finetune"],
        local=stored["local"],
        moe=stored["moe"],
        epochs=epochs,
        best_loss={},
        moe_plus=plus,
    )
    metrics = evaluate_models(
        node.cfg, node.data, node.net, node.gate_net, stored["global"], models
    )
    return _reply(msg, {METRICS: MetricRecord(dict(metrics.items()))})


def _restore_moe_plus(node: _Node, state: RecordDict, epochs: int) -> FittedGate:
    key = STATE_PREFIX + MOE_PLUS
    if key not in state.array_records:
        raise FedmoeError("this node holds no moe-plus gate for this run; personalise first")
    plus_net = moe_plus_net(node.cfg, node.data, node.net, node.gate_net)
    params = params_from_record(
        state.array_records[key], moe_plus_reference(node.cfg, node.data, plus_net)
    )
    t = state.metric_records[key + ".temperature"]
    temperatures = (number(t["specialist"], "specialist"), number(t["global"], "global"))
    return restore_moe_plus(node.cfg, node.data, plus_net, params, temperatures, epochs)
