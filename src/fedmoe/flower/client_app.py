"""The fedmoe ClientApp: one client of the federation, on its own node.

Messages it answers (``message_type``), and what it sends back:

- ``query.hello``: who it is (client id, opt-out, example counts, input shape, classes,
  majority classes, a digest of its partition rows): metadata only.
- ``train``: FedAvg local training from the received global model at K=1; replies the
  updated model and its number of training examples. With IFCA's cluster models
  instead of one global model, it trains the one with the lowest loss on its training
  data and also replies which (``cluster``). An opt-out node declines (a ``declined``
  ConfigRecord, no parameters).
- ``evaluate``: the received global model's loss and accuracy on its validation set
  (with cluster models: those of the one with the lowest loss) (metrics only); an
  opt-out node declines.
- ``train.personalise``: FT, Local and MoE (and MoE+ with ``moe_plus.enabled``; IFCA's
  pick and ``moe-ifca`` with ``clustered.enabled``) from the received (best) global
  and cluster models; the models, the mixtures' specialist and gates included, stay in
  the node's state (``context.state``); replies epochs, validation losses and the
  picked cluster model's index only.
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
    CLUSTERS,
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
    IFCA,
    MOE_IFCA,
    MOE_PLUS,
    Personalised,
    cluster_update,
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
from fedmoe.flower.records import (
    models_from_content,
    models_to_records,
    number,
    params_from_record,
    params_to_record,
)
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

    def clusters(self, content: RecordDict, prefix: str = CLUSTERS) -> Params | None:
        """IFCA's cluster models in ``content`` (``clustered.models`` of them), if any."""
        reference = reference_params(self.net, self.dtype, self.device)
        return models_from_content(content, prefix, self.cfg.clustered.models, reference)


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
    metrics = MetricRecord({"num-examples": int(node.data.train.n[0])})
    clusters = node.clusters(msg.content)
    if clusters is None:
        global_params = node.global_params(msg.content)
        update = local_update(node.cfg, node.data, node.net, global_params, round_)
    else:
        update, chosen = cluster_update(node.cfg, node.data, node.net, clusters, round_)
        metrics["cluster"] = chosen
    return _reply(msg, {UPDATE: params_to_record(update), METRICS: metrics})


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """The global model on this client's validation set (declined by an opt-out node)."""
    node = _Node(context)
    if node.data.opt_out:
        return _declined(msg)
    params = node.clusters(msg.content) or node.global_params(msg.content)
    loss, accuracy, n = validate(node.net, params, node.data)
    metrics = MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": n})
    return _reply(msg, {METRICS: metrics})


@app.train("personalise")
def personalise_models(msg: Message, context: Context) -> Message:
    """FT, Local and MoE; the models stay in this node's state, metrics go back."""
    node = _Node(context)
    global_params = node.global_params(msg.content)
    clusters = node.clusters(msg.content)
    if node.cfg.clustered.enabled and clusters is None:
        raise FedmoeError("the message carries no cluster models (clustered.enabled is set)")
    models = personalise(node.cfg, node.data, node.net, node.gate_net, global_params, clusters)
    state = context.state
    state[STATE_PREFIX + "global"] = params_to_record(global_params)
    for name in ("finetune", "local", "moe"):
        state[STATE_PREFIX + name] = params_to_record(getattr(models, name))
    state[STATE_PREFIX + "epochs"] = MetricRecord(dict(models.epochs))
    values: dict[str, MetricRecordValues] = {f"epochs.{k}": v for k, v in models.epochs.items()}
    values |= {f"best-loss.{k}": v for k, v in models.best_loss.items()}
    for name, fit in ((MOE_PLUS, models.moe_plus), (MOE_IFCA, models.moe_ifca)):
        if fit is not None:
            _keep_gate(state, name, fit)
    if clusters is not None and models.ifca_model is not None:
        for key, record in models_to_records(clusters, STATE_PREFIX + CLUSTERS).items():
            state[key] = record
        state[STATE_PREFIX + IFCA] = MetricRecord({"model": models.ifca_model})
        values[f"{IFCA}.model"] = models.ifca_model
    return _reply(msg, {METRICS: MetricRecord(values)})


def _keep_gate(state: RecordDict, name: str, fit: FittedGate) -> None:
    """Keep a fitted gate in the node's state: its parameters and temperatures."""
    state[STATE_PREFIX + name] = params_to_record(fit.params)
    temperatures: dict[str, MetricRecordValues] = {
        "specialist": float(fit.t_specialist[0]),
        "global": float(fit.t_global[0]),
    }
    if fit.t_clusters is not None:
        temperatures["clusters"] = [float(t) for t in fit.t_clusters[0]]
    state[STATE_PREFIX + name + ".temperature"] = MetricRecord(temperatures)


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
    plus = ifca_model = moe_ifca = clusters = None
    if node.cfg.moe_plus.enabled:
        plus = _restore_gate(node, state, MOE_PLUS, epochs[MOE_PLUS])
    if node.cfg.clustered.enabled:
        clusters = node.clusters(state, STATE_PREFIX + CLUSTERS)
        if clusters is None or STATE_PREFIX + IFCA not in state.metric_records:
            raise FedmoeError("this node holds no cluster models for this run; personalise first")
        ifca_model = int(number(state.metric_records[STATE_PREFIX + IFCA]["model"], "model"))
        moe_ifca = _restore_gate(node, state, MOE_IFCA, epochs[MOE_IFCA])
    models = Personalised(
        finetune=stored["finetune"],
        local=stored["local"],
        moe=stored["moe"],
        epochs=epochs,
        best_loss={},
        moe_plus=plus,
        ifca_model=ifca_model,
        moe_ifca=moe_ifca,
    )
    metrics = evaluate_models(
        node.cfg, node.data, node.net, node.gate_net, stored["global"], models, clusters
    )
    return _reply(msg, {METRICS: MetricRecord(dict(metrics.items()))})


def _restore_gate(node: _Node, state: RecordDict, name: str, epochs: int) -> FittedGate:
    """The ``moe-plus`` or ``moe-ifca`` gate :func:`_keep_gate` kept."""
    key = STATE_PREFIX + name
    if key not in state.array_records:
        raise FedmoeError(f"this node holds no {name} gate for this run; personalise first")
    clusters = node.cfg.clustered.models if name == MOE_IFCA else 0
    plus_net = moe_plus_net(node.cfg, node.data, node.net, node.gate_net, clusters)
    params = params_from_record(
        state.array_records[key], moe_plus_reference(node.cfg, node.data, plus_net)
    )
    t = state.metric_records[key + ".temperature"]
    temperatures = [number(t["specialist"], "specialist"), number(t["global"], "global")]
    if clusters:
        listed = t.get("clusters")
        if not isinstance(listed, list) or len(listed) != clusters:
            raise FedmoeError(f"the {name} gate kept on this node lacks its cluster temperatures")
        temperatures += [number(v, "clusters") for v in listed]
    return restore_moe_plus(node.cfg, node.data, plus_net, params, tuple(temperatures), epochs)
