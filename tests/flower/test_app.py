"""The ServerApp and ClientApp logic in one process (FakeGrid, no Flower processes):
equivalence with the embedded run for every method that runs on nodes, opt-out, bad
updates, slow, dead and restarted nodes, the node's state, lost clients and why,
refused nodes and local data."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from fakegrid import FakeGrid, FakeNode, honest
from flwr.app import Array, ConfigRecord, Context, Message, RecordDict

from fedmoe.data import load_dataset
from fedmoe.errors import ConfigError, DataError
from fedmoe.experiment import config
from fedmoe.experiment.prepare import prepare
from fedmoe.experiment.run import run_experiment
from fedmoe.flower.client_app import app as client_app
from fedmoe.flower.config import FlowerOptions, NodeOptions, run_config
from fedmoe.flower.messages import ROUND, SERVER, STATE_PREFIX, UPDATE
from fedmoe.flower.node_data import load_node_data
from fedmoe.flower.records import server_to_records
from fedmoe.flower.server_app import run_federation

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")

#: What a node keeps in its ``context.state``: each method's personalised output.
OUTPUT = STATE_PREFIX + "output."
PAPER = ["fedavg", "local", "finetune", "moe"]
#: Every built-in method that runs on nodes.
ALL = [*PAPER, "moe-staged", "moe-plus", "ifca", "moe-ifca"]

SMALL: dict[str, Any] = {
    "model": "mlp",
    "data": {"global_test_examples": 500},
    "partition": {"clients": 6, "train": 20, "val": 20, "test": 20, "opt_out": 0.34},
    "federated": {"rounds": 2, "clients_per_round": 3, "local_epochs": 1, "lr": 1e-3},
    "personalise": {"epochs": 4, "lr": 1e-3, "stopping": {"check_every": 2, "patience": 1}},
}
OPTIONS = FlowerOptions(
    round_timeout=1.0, personalise_timeout=1.0, join_timeout=1.0, poll_interval=0.01
)


def small(
    methods: list[str] | None = None,
    method: dict[str, Any] | None = None,
    **sections: Any,
) -> config.ExperimentConfig:
    """SMALL with ``methods`` (default: the paper's four), their ``[method.*]`` options
    (``moe`` at lr 1e-3 where listed) and ``sections`` merged into SMALL's."""
    listed = methods or PAPER
    options = {"moe": {"lr": 1e-3}} if "moe" in listed else {}
    data: dict[str, Any] = dict(SMALL) | {"methods": listed, "method": options | (method or {})}
    for name, values in sections.items():
        data[name] = (SMALL.get(name, {}) | values) if isinstance(values, dict) else values
    return config.from_dict(data)


ALL_IN = {"opt_out": 0.0}
EVERYONE = {"clients_per_round": 6}


@pytest.fixture
def make_grid() -> Iterator[Any]:
    grids: list[FakeGrid] = []

    def make(cfg: config.ExperimentConfig, nodes: int | None = None) -> FakeGrid:
        grid = FakeGrid(run_config(cfg, OPTIONS))
        grids.append(grid)
        for i in range(cfg.partition.clients if nodes is None else nodes):
            grid.add_node({"partition-id": i, "num-partitions": cfg.partition.clients})
        return grid

    before = torch.get_num_threads()
    yield make
    torch.set_num_threads(before)
    for grid in grids:
        grid.close()


@pytest.mark.parametrize(
    ("methods", "method"),
    [
        (
            ALL,
            {
                "moe-staged": {"lr": 1e-3},
                "moe-plus": {"ablation": True},
                "ifca": {"models": 2},
            },
        ),
        (
            [*PAPER, "moe-plus", "ifca", "moe-ifca"],
            {
                "moe": {"lr": 1e-3, "pool": "log-linear", "schedule": "staged"},
                "moe-plus": {"inputs": "image", "prior": False, "data": "train"},
                "ifca": {"router": "choice"},
                "moe-ifca": {
                    "inputs": "image",
                    "calibrate": False,
                    "data": "train",
                    "clusters": "routed",
                },
            },
        ),
    ],
    ids=["every-method-ablation", "other-options"],
)
def test_in_process_run_equals_the_embedded_run(
    make_grid: Any, methods: list[str], method: dict[str, Any]
) -> None:
    cfg = small(methods, method, dtype="float64")
    flower = run_federation(make_grid(cfg), cfg, OPTIONS)
    embedded = run_experiment(cfg)
    assert flower["format"] == embedded["format"] == 2
    assert list(flower["methods"]) == list(embedded["methods"]) == methods
    # Every method's entry, the same in float64: accuracies, gates, epochs, the federated
    # phases' histories, moe-plus's ablation variants, IFCA's details.
    for name in methods:
        assert flower["methods"][name] == embedded["methods"][name], name
    if "ablation" in method.get("moe-plus", {}):
        assert len(flower["methods"]["moe-plus"]["variants"]) > 1
    if (
        method.get("ifca", {}).get("router", "none") != "none"
    ):  # the routed mixture travelled and was scored
        assert "routed" in flower["methods"]["ifca"]["variants"]
    assert flower["clients"] == embedded["clients"]
    assert flower["partition"]["opt_out"] == embedded["partition"]["opt_out"]
    assert flower["partition"]["majority"] == embedded["partition"]["majority"]
    # The rounds of each federated method, as run over the nodes.
    rounds = flower["flower"]["rounds"]
    assert list(rounds) == ["fedavg", "ifca"]
    for name, rows in rounds.items():
        history = embedded["methods"][name]["federation"]["history"]
        assert [r["aggregated"] for r in rows] == [h["clients"] for h in history]
    ifca = embedded["methods"]["ifca"]
    models = ifca["details"]["models"]
    for row in rounds["ifca"]:  # each aggregated client trained one of the models
        assert len(row["clusters"]) == len(row["aggregated"])
        assert set(row["clusters"]) <= set(range(models))
    assert all("clusters" not in row for row in rounds["fedavg"])
    assert flower["flower"]["lost_clients"] == [] and flower["flower"]["lost_reasons"] == {}
    # The partition's opt-out clients never trained and sent no parameters.
    opted_out = {c for c, o in enumerate(embedded["partition"]["opt_out"]) if o}
    assert len(opted_out) == 2
    from_opt_out = [row for row in flower["flower"]["audit"] if row["client"] in opted_out]
    assert {row["message_type"] for row in from_opt_out} == {
        "query.hello",
        "train.personalise",
        "evaluate.personalise",
    }
    assert all(row["arrays"] == 0 and row["array_bytes"] == 0 for row in from_opt_out)


def _poisoned(msg: Message, context: Context) -> Message | None:
    reply = honest(msg, context)
    if reply is not None and msg.metadata.message_type == "train":
        record = reply.content.array_records[UPDATE]
        name = next(iter(record.keys()))
        bad = record[name].numpy().copy()
        bad.flat[0] = np.nan
        record[name] = Array(bad)
    return reply


def _leaky(msg: Message, context: Context) -> Message | None:
    """Sends its personalised model back with the personalisation metrics."""
    reply = honest(msg, context)
    if reply is not None and msg.metadata.message_type == "train.personalise":
        reply.content["leak"] = context.state.array_records[OUTPUT + "moe"]
    return reply


def _silent(msg: Message, context: Context) -> Message | None:
    return honest(msg, context) if msg.metadata.message_type == "query.hello" else None


def test_bad_updates_and_silent_nodes_are_dropped_and_the_round_completes(
    make_grid: Any,
) -> None:
    cfg = small(partition=ALL_IN, federated=EVERYONE)
    grid = make_grid(cfg)
    nodes = list(grid.nodes.values())
    nodes[1].behaviour = _poisoned
    nodes[2].behaviour = _silent
    nodes[4].behaviour = _leaky
    res = run_federation(grid, cfg, OPTIONS)
    rejected = {
        (r["client"], r["phase"], r["round"]): r["reason"] for r in res["flower"]["rejected"]
    }
    assert "non-finite" in rejected[(1, "fedavg", 0)]
    assert rejected[(2, "fedavg", 0)] == "no reply before the timeout"
    assert rejected[(2, "fedavg-validate", 1)] == "no reply before the timeout"
    rounds = res["flower"]["rounds"]["fedavg"]
    assert [r["aggregated"] for r in rounds] == [[0, 3, 4, 5]] * 2
    assert all(r["sampled"] == list(range(6)) for r in rounds)
    assert "only metrics" in rejected[(4, "personalise", -1)]
    # The poisoned node still personalises; the silent and the leaky ones are left out,
    # and the results say why.
    assert res["clients"] == [0, 1, 3, 5]
    assert res["flower"]["lost_clients"] == [2, 4]
    assert res["flower"]["lost_reasons"] == {
        "2": "personalise: no reply before the timeout",
        "4": "personalise: sent parameters where only metrics may come back",
    }
    history = res["methods"]["fedavg"]["federation"]["history"]
    checks = [h["val_loss"] for h in history if h["val_loss"] is not None]
    assert checks and all(np.isfinite(checks))
    for entry in res["methods"].values():
        assert len(entry["local_test"]["per_client"]) == 4


def _misreports_choice(msg: Message, context: Context) -> Message | None:
    """Claims to have trained a server model that does not exist."""
    reply = honest(msg, context)
    if reply is not None and "choice" in reply.content.metric_records.get("metrics", {}):
        reply.content.metric_records["metrics"]["choice"] = 7
    return reply


def test_an_ifca_update_for_no_server_model_is_dropped(make_grid: Any) -> None:
    cfg = small(["fedavg", "ifca"], partition=ALL_IN, federated=EVERYONE)
    grid = make_grid(cfg)
    list(grid.nodes.values())[1].behaviour = _misreports_choice
    res = run_federation(grid, cfg, OPTIONS)
    reasons = {(r["client"], r["phase"]): r["reason"] for r in res["flower"]["rejected"]}
    assert "trained server model 7, not one of 0..2" in reasons[(1, "ifca")]
    assert (1, "fedavg") not in reasons
    rounds = res["flower"]["rounds"]
    assert all(1 not in row["aggregated"] for row in rounds["ifca"])
    assert [row["aggregated"] for row in rounds["fedavg"]] == [list(range(6))] * 2
    # It still personalises, with the cluster models, like every other node.
    details = res["methods"]["ifca"]["details"]
    assert res["clients"] == list(range(6)) and sum(details["clients_per_model"]) == 6


def test_an_opt_out_node_declines_training_and_sends_no_parameters(make_grid: Any) -> None:
    cfg = small(partition=ALL_IN)
    grid = make_grid(cfg, nodes=0)
    node = grid.add_node({"partition-id": 0, "num-partitions": 6, "opt-out": True})
    from fedmoe.models import build_network

    net = build_network("mlp", (1, 28, 28), 10)
    records: dict[str, Any] = dict(server_to_records(net.init(0, torch.tensor([0]), "x"), SERVER))
    records[ROUND] = ConfigRecord({"method": "fedavg", "round": 0})
    for mtype in ("train", "evaluate"):
        msg = Message(RecordDict(records), dst_node_id=node.node_id, message_type=mtype)
        msg.metadata.__dict__["_message_id"] = "m"
        reply = client_app(msg, node.context)
        assert "declined" in reply.content.config_records
        assert len(reply.content.array_records) == 0
    assert not any(k.startswith(STATE_PREFIX) for k in node.context.state.array_records)


def test_an_opt_out_node_is_never_asked_to_train_and_sends_no_parameters(
    make_grid: Any,
) -> None:
    cfg = small([*PAPER, "ifca"], partition=ALL_IN, federated=EVERYONE)
    grid = make_grid(cfg, nodes=5)
    opt_out = grid.add_node({"partition-id": 5, "num-partitions": 6, "opt-out": True})
    res = run_federation(grid, cfg, OPTIONS)
    assert res["clients"] == list(range(6))
    assert res["partition"]["opt_out"] == [False] * 5 + [True]
    assert opt_out.received == ["query.hello", "train.personalise", "evaluate.personalise"]
    for rows in res["flower"]["rounds"].values():
        assert all(5 not in r["sampled"] and r["aggregated"] == list(range(5)) for r in rows)
    audited = [a for a in res["flower"]["audit"] if a["client"] == 5]
    assert len(audited) == 3 and all(a["arrays"] == 0 for a in audited)
    # It personalised every method on its own data, with the federated models.
    assert {k for k in opt_out.context.state.array_records} == {OUTPUT + m for m in cfg.methods}


def test_a_restarted_node_rejoins_with_a_new_node_id(make_grid: Any) -> None:
    cfg = small(partition=ALL_IN, federated=EVERYONE | {"rounds": 3})
    grid = make_grid(cfg)
    victim = list(grid.nodes.values())[3]
    replacement: list[FakeNode] = []

    def dies_in_round_1(msg: Message, context: Context) -> Message | None:
        record = msg.content.config_records.get(ROUND)
        if msg.metadata.message_type == "train" and record is not None and record["round"] == 1:
            victim.online = False
            replacement.append(grid.add_node({"partition-id": 3, "num-partitions": 6}))
            return None
        return honest(msg, context)

    victim.behaviour = dies_in_round_1
    res = run_federation(grid, cfg, OPTIONS)
    assert res["clients"] == list(range(6))
    rounds = res["flower"]["rounds"]["fedavg"]
    # Round 1 went on without it; in round 2 its new node trained in its place.
    assert [r["aggregated"] for r in rounds] == [list(range(6)), [0, 1, 2, 4, 5], list(range(6))]
    assert replacement[0].received[:2] == ["query.hello", "train"]
    nodes = {n["client"]: n["node_id"] for n in res["flower"]["nodes"]}
    assert nodes[3] == replacement[0].node_id != victim.node_id
    # The replacement personalised and keeps its specialist and gate in its state.
    state = replacement[0].context.state
    moe = state.array_records[OUTPUT + "moe"]
    assert {k.split(".")[0] for k in moe} == {"specialist", "gate"}
    assert victim.context.state.array_records.get(OUTPUT + "moe") is None


def test_a_client_whose_node_comes_back_before_personalisation_is_personalised_there(
    make_grid: Any,
) -> None:
    cfg = small([*PAPER, "ifca"], partition=ALL_IN, federated=EVERYONE)
    grid = make_grid(cfg)
    victim = list(grid.nodes.values())[2]
    replacement: list[FakeNode] = []
    last = cfg.federated.rounds - 1

    def dies_after_the_federated_rounds(msg: Message, context: Context) -> Message | None:
        reply = honest(msg, context)
        record = msg.content.config_records.get(ROUND)
        if (
            msg.metadata.message_type == "evaluate"
            and record is not None
            and (record["method"], record["round"]) == ("ifca", last)
        ):
            # It validated the last round, then died and came back as a new node.
            victim.online = False
            replacement.append(grid.add_node({"partition-id": 2, "num-partitions": 6}))
        return reply

    victim.behaviour = dies_after_the_federated_rounds
    res = run_federation(grid, cfg, OPTIONS)
    assert len(replacement) == 1
    new = replacement[0]
    # The old node trained in every round; the new one only personalised and evaluated.
    for rows in res["flower"]["rounds"].values():
        assert [r["aggregated"] for r in rows] == [list(range(6))] * 2
        assert rows[-1]["validated"] == list(range(6))
    assert new.received == ["query.hello", "train.personalise", "evaluate.personalise"]
    assert "train.personalise" not in victim.received
    assert res["clients"] == list(range(6))
    assert res["flower"]["lost_clients"] == [] and res["flower"]["lost_reasons"] == {}
    nodes = {n["client"]: n["node_id"] for n in res["flower"]["nodes"]}
    assert nodes[2] == new.node_id
    assert {k for k in new.context.state.array_records} == {OUTPUT + m for m in cfg.methods}
    assert not any(k.startswith(OUTPUT) for k in victim.context.state.array_records)


def test_a_slow_starting_replacement_node_is_greeted_once_and_identified_when_it_answers(
    make_grid: Any,
) -> None:
    # A restarted node's first ClientApp process can take longer than the rejoin wait
    # to answer its hello (a loaded machine). Its hello is not sent again: the pending
    # one is read while the others personalise, and the client is personalised there.
    cfg = small(["fedavg", "local"], partition=ALL_IN, federated=EVERYONE)
    options = FlowerOptions(
        round_timeout=1.0,
        personalise_timeout=3.0,
        join_timeout=1.0,
        rejoin_timeout=0.2,
        poll_interval=0.01,
    )
    grid = make_grid(cfg)
    victim = list(grid.nodes.values())[2]
    replacement: list[FakeNode] = []

    def dies_after_the_federated_rounds(msg: Message, context: Context) -> Message | None:
        reply = honest(msg, context)
        record = msg.content.config_records.get(ROUND)
        if msg.metadata.message_type == "evaluate" and record is not None and record["round"] == 1:
            victim.online = False
            new = grid.add_node({"partition-id": 2, "num-partitions": 6})
            new.delays = {"query.hello": 1.0}
            replacement.append(new)
        return reply

    victim.behaviour = dies_after_the_federated_rounds
    for node in grid.nodes.values():
        if node is not victim:
            node.delays = {"train.personalise": 1.5}
    res = run_federation(grid, cfg, options)
    assert replacement[0].received == ["query.hello", "train.personalise", "evaluate.personalise"]
    assert res["clients"] == list(range(6))
    assert res["flower"]["lost_clients"] == []
    nodes = {n["client"]: n["node_id"] for n in res["flower"]["nodes"]}
    assert nodes[2] == replacement[0].node_id


def test_a_slow_personalise_reply_is_waited_for_even_from_a_suspect(make_grid: Any) -> None:
    cfg = small(["fedavg", "local", "finetune"], partition=ALL_IN, federated=EVERYONE)
    options = FlowerOptions(
        round_timeout=0.3, personalise_timeout=1.5, join_timeout=1.0, poll_interval=0.01
    )
    grid = make_grid(cfg)
    slow = list(grid.nodes.values())[4]
    # Its round replies come after the round timeout (so it becomes a suspect); its
    # personalise reply after the round timeout too, but within the personalise timeout.
    slow.delays = {"train": 1.0, "evaluate": 1.0, "train.personalise": 1.5}
    res = run_federation(grid, cfg, options)
    rejected = {(r["client"], r["phase"], r["round"]) for r in res["flower"]["rejected"]}
    assert {(4, "fedavg", 0), (4, "fedavg", 1), (4, "fedavg-validate", 1)} <= rejected
    assert all(r[0] == 4 and r[1] != "personalise" for r in rejected)
    assert [r["aggregated"] for r in res["flower"]["rounds"]["fedavg"]] == [[0, 1, 2, 3, 5]] * 2
    # Its results were collected all the same.
    assert res["clients"] == list(range(6))
    assert res["flower"]["lost_clients"] == [] and res["flower"]["lost_reasons"] == {}
    assert res["timing_s"]["personalise"] >= 1.5


def test_a_round_whose_nodes_are_all_suspects_still_waits_for_them(make_grid: Any) -> None:
    # Every node misses round 0's deadline (a loaded machine, say) and is a suspect in
    # round 1; the server must still wait for them rather than give the round up.
    cfg = small(["fedavg", "local"], partition=ALL_IN, federated=EVERYONE)
    # Margins of over a second: a loaded machine (the suite's other worker, say) can
    # stall this process for a few hundred milliseconds.
    options = FlowerOptions(
        round_timeout=1.5, personalise_timeout=2.0, join_timeout=1.0, poll_interval=0.01
    )
    grid = make_grid(cfg)

    def late_in_round_0(node: FakeNode) -> Any:
        def behaviour(msg: Message, context: Context) -> Message | None:
            record = msg.content.config_records.get(ROUND)
            if record is not None:
                node.delays[msg.metadata.message_type] = 3.0 if record["round"] == 0 else 0.2
            return honest(msg, context)

        return behaviour

    for node in grid.nodes.values():
        node.behaviour = late_in_round_0(node)
    res = run_federation(grid, cfg, options)
    rounds = res["flower"]["rounds"]["fedavg"]
    assert rounds[0]["aggregated"] == []
    assert rounds[1]["aggregated"] == rounds[1]["validated"] == list(range(6))
    rejected = {(r["phase"], r["round"]) for r in res["flower"]["rejected"]}
    assert rejected == {("fedavg", 0)}
    assert res["clients"] == list(range(6))


def test_a_dead_node_is_a_lost_client_with_its_reason(make_grid: Any) -> None:
    cfg = small(partition=ALL_IN, federated=EVERYONE)
    grid = make_grid(cfg)
    victim = list(grid.nodes.values())[1]

    def dies_in_round_0(msg: Message, context: Context) -> Message | None:
        if msg.metadata.message_type == "train":
            victim.online = False
            return None
        return honest(msg, context)

    victim.behaviour = dies_in_round_0
    res = run_federation(grid, cfg, OPTIONS)
    assert res["clients"] == [0, 2, 3, 4, 5]
    assert res["flower"]["lost_clients"] == [1]
    assert res["flower"]["lost_reasons"] == {"1": "personalise: its node was not online"}
    rounds = res["flower"]["rounds"]["fedavg"]
    assert rounds[0]["aggregated"] == [0, 2, 3, 4, 5]
    assert rounds[1]["absent"] == [1] and 1 not in rounds[1]["aggregated"]
    assert victim.received.count("train") == 1
    for entry in res["methods"].values():
        assert len(entry["global_test"]["per_client"]) == 5


def _boastful(msg: Message, context: Context) -> Message | None:
    """Claims a huge training set at hello (it would weigh its updates)."""
    reply = honest(msg, context)
    if reply is not None and msg.metadata.message_type == "query.hello":
        reply.content.config_records["node"]["num-train"] = 10**6
    return reply


def test_nodes_that_do_not_fit_the_run_are_refused(make_grid: Any) -> None:
    cfg = small(partition=ALL_IN)
    grid = make_grid(cfg, nodes=2)
    grid.add_node({"partition-id": 2, "num-partitions": 5})
    grid.add_node({"partition-id": 1, "num-partitions": 6})  # client 1 is taken
    grid.add_node({"partition-id": 3, "num-partitions": 6}, behaviour=_boastful)
    res = run_federation(grid, cfg, OPTIONS)
    reasons = list(res["flower"]["refused_nodes"].values())
    assert any("num-partitions=5" in r for r in reasons)
    assert any("claims client 1" in r for r in reasons)
    assert any("reports (1000000, 20, 20) train/val/test examples" in r for r in reasons)
    assert res["clients"] == [0, 1]


def _write_idx(directory: Path, x: np.ndarray, y: np.ndarray, prefix: str) -> None:
    images = struct.pack(">HBBIII", 0, 8, 3, len(x), 28, 28) + x.astype(np.uint8).tobytes()
    labels = struct.pack(">HBBI", 0, 8, 1, len(y)) + y.astype(np.uint8).tobytes()
    (directory / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
    (directory / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))


def test_a_node_reads_its_own_local_data(tmp_path: Path) -> None:
    ds = load_dataset("fashion-mnist")
    _write_idx(tmp_path, ds.x_train[:30, 0], ds.y_train[:30], "train")
    _write_idx(tmp_path, ds.x_test[:12, 0], ds.y_test[:12], "t10k")
    cfg = config.from_dict({"partition": {"clients": 3, "train": 2, "val": 1}})
    data = load_node_data(cfg, NodeOptions(1, 3, local_data=str(tmp_path)))
    assert (int(data.train.n[0]), int(data.val.n[0]), int(data.test.n[0])) == (20, 10, 12)
    assert data.client == 1 and data.scheme == "local-data" and data.digest == ""
    assert data.global_test.capacity == len(ds.y_test)
    with pytest.raises(DataError, match="local data lacks"):
        load_node_data(cfg, NodeOptions(1, 3, local_data=str(tmp_path / "nowhere")))


def test_a_node_and_the_simulator_evaluate_on_the_same_global_test_examples() -> None:
    cfg = config.from_dict({"partition": {"clients": 3}, "data": {"global_test_examples": 300}})
    node = load_node_data(cfg, NodeOptions(1, 3)).global_test
    simulated = prepare(cfg).global_test
    assert node.capacity == simulated.capacity == 300
    assert torch.equal(node.x, simulated.x) and torch.equal(node.y, simulated.y)
    ds = load_dataset("fashion-mnist")
    assert node.y.tolist() == ds.y_test[:300].tolist()
    with pytest.raises(ConfigError, match="global_test_examples must be >= 0"):
        config.from_dict({"data": {"global_test_examples": -1}})


def test_a_run_nobody_fits_fails_with_the_nodes_reasons(make_grid: Any) -> None:
    cfg = small()
    grid = make_grid(cfg, nodes=0)
    for i in range(2):  # e.g. `flwr run` with the default 2 simulated SuperNodes
        grid.add_node({"partition-id": i, "num-partitions": 2})
    with pytest.raises(RuntimeError, match=r"no node could be identified .*num-partitions=2"):
        run_federation(grid, cfg, OPTIONS)
