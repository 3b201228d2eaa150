"""The ServerApp and ClientApp logic in one process (FakeGrid, no Flower processes):
equivalence with the embedded run, opt-out, bad updates, dead and restarted nodes, the
node's state, refused nodes and local data."""

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
from flwr.app import Array, Context, Message, RecordDict

from fedmoe.data import load_dataset
from fedmoe.errors import DataError
from fedmoe.experiment import config
from fedmoe.experiment.protocol import run_experiment
from fedmoe.flower.client_app import app as client_app
from fedmoe.flower.config import FlowerOptions, NodeOptions, run_config
from fedmoe.flower.messages import GLOBAL, STATE_PREFIX, UPDATE
from fedmoe.flower.node_data import load_node_data
from fedmoe.flower.server_app import run_federation

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")

SMALL: dict[str, Any] = {
    "model": "mlp",
    "partition": {"clients": 6, "train": 20, "val": 20, "test": 20, "opt_out": 0.34},
    "fedavg": {"rounds": 2, "clients_per_round": 3, "local_epochs": 1, "lr": 1e-3},
    "personalise": {
        "epochs": 4,
        "lr": 1e-3,
        "moe_lr": 1e-3,
        "stopping": {"check_every": 2, "patience": 1},
    },
}
OPTIONS = FlowerOptions(
    round_timeout=1.0, personalise_timeout=1.0, join_timeout=1.0, poll_interval=0.01
)


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
    ("moe_plus", "clustered"),
    [
        ({"enabled": True}, {"enabled": True, "models": 2}),
        ({"enabled": True, "inputs": "image", "prior": False, "data": "train"}, {}),
    ],
)
def test_in_process_run_equals_the_embedded_run(
    make_grid: Any, moe_plus: dict[str, Any], clustered: dict[str, Any]
) -> None:
    extra = {"dtype": "float64", "moe_plus": moe_plus, "clustered": clustered}
    cfg = config.from_dict(SMALL | extra)
    flower = run_federation(make_grid(cfg), cfg, OPTIONS)
    embedded = run_experiment(cfg)
    assert list(flower["methods"]) == list(embedded["methods"])
    assert "moe-plus" in flower["methods"]
    if clustered:
        assert {"ifca", "moe-ifca"} <= set(flower["methods"])
        assert flower["gate_ifca"] == embedded["gate_ifca"]
        assert flower["clustered"] == embedded["clustered"]
        rounds = flower["flower"]["cluster_rounds"]
        assert len(rounds) == embedded["clustered"]["rounds_run"]
        for row in rounds:  # each aggregated client trained one of the 2 models
            assert len(row["clusters"]) == len(row["aggregated"])
            assert set(row["clusters"]) <= {0, 1}
    for name in flower["methods"]:
        for split in ("local_test", "global_test"):
            assert (
                flower["methods"][name][split]["per_client"]
                == embedded["methods"][name][split]["per_client"]
            )
    for key in ("history", "best_round"):
        assert flower["fedavg"][key] == embedded["fedavg"][key]
    assert flower["epochs"] == embedded["epochs"]
    assert flower["gate"] == embedded["gate"]
    assert flower["gate_plus"] == embedded["gate_plus"]
    assert flower["partition"]["opt_out"] == embedded["partition"]["opt_out"]
    assert flower["partition"]["majority"] == embedded["partition"]["majority"]
    # The partition's opt-out clients never trained and sent no parameters.
    opted_out = {c for c, o in enumerate(embedded["partition"]["opt_out"]) if o}
    assert len(opted_out) == 2
    for row in flower["flower"]["audit"]:
        if row["client"] in opted_out:
            assert row["arrays"] == 0 and row["message_type"] != "train"


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
        reply.content["leak"] = context.state.array_records[STATE_PREFIX + "moe"]
    return reply


def _silent(msg: Message, context: Context) -> Message | None:
    return honest(msg, context) if msg.metadata.message_type == "query.hello" else None


def test_bad_updates_and_silent_nodes_are_dropped_and_the_round_completes(
    make_grid: Any,
) -> None:
    cfg = config.from_dict(
        SMALL
        | {"partition": SMALL["partition"] | {"opt_out": 0.0}, "fedavg": {"rounds": 2}}
        | {"fedavg": SMALL["fedavg"] | {"clients_per_round": 6}}
    )
    grid = make_grid(cfg)
    nodes = list(grid.nodes.values())
    nodes[1].behaviour = _poisoned
    nodes[2].behaviour = _silent
    nodes[4].behaviour = _leaky
    res = run_federation(grid, cfg, OPTIONS)
    rejected = {
        (r["client"], r["phase"], r["round"]): r["reason"] for r in res["flower"]["rejected"]
    }
    assert "non-finite" in rejected[(1, "train", 0)]
    assert rejected[(2, "train", 0)] == "no reply before the timeout"
    for round_ in res["flower"]["rounds"]:
        assert round_["aggregated"] == [0, 3, 4, 5]
    assert "only metrics" in rejected[(4, "personalise", -1)]
    # The poisoned node still personalises; the silent and the leaky ones are left out.
    assert res["clients"] == [0, 1, 3, 5]
    assert res["flower"]["lost_clients"] == [2, 4]
    checks = [h["val_loss"] for h in res["fedavg"]["history"] if h["val_loss"] is not None]
    assert checks and all(np.isfinite(checks))


def _misreports_cluster(msg: Message, context: Context) -> Message | None:
    """Claims to have trained a cluster model that does not exist."""
    reply = honest(msg, context)
    if reply is not None and "cluster" in reply.content.metric_records.get("metrics", {}):
        reply.content.metric_records["metrics"]["cluster"] = 7
    return reply


def test_a_clustered_update_for_no_cluster_model_is_dropped(make_grid: Any) -> None:
    cfg = config.from_dict(
        SMALL
        | {"partition": SMALL["partition"] | {"opt_out": 0.0}, "clustered": {"enabled": True}}
        | {"fedavg": SMALL["fedavg"] | {"clients_per_round": 6}}
    )
    grid = make_grid(cfg)
    list(grid.nodes.values())[1].behaviour = _misreports_cluster
    res = run_federation(grid, cfg, OPTIONS)
    reasons = {(r["client"], r["phase"]): r["reason"] for r in res["flower"]["rejected"]}
    assert "trained cluster model 7, not one of 0..2" in reasons[(1, "clustered")]
    assert all(1 not in row["aggregated"] for row in res["flower"]["cluster_rounds"])
    assert [row["aggregated"] for row in res["flower"]["rounds"]] == [list(range(6))] * 2
    # It still personalises, with the cluster models, like every other node.
    assert res["clients"] == list(range(6)) and sum(res["clustered"]["clients_per_model"]) == 6


def test_an_opt_out_node_declines_training_and_sends_no_parameters(make_grid: Any) -> None:
    cfg = config.from_dict(SMALL | {"partition": SMALL["partition"] | {"opt_out": 0.0}})
    grid = make_grid(cfg, nodes=0)
    node = grid.add_node({"partition-id": 0, "num-partitions": 6, "opt-out": True})
    from fedmoe.flower.records import params_to_record
    from fedmoe.models import build_network

    net = build_network("mlp", (1, 28, 28), 10)
    content = RecordDict({GLOBAL: params_to_record(net.init(0, torch.tensor([0]), "x"))})
    for mtype in ("train", "evaluate"):
        msg = Message(content, dst_node_id=node.node_id, message_type=mtype)
        msg.metadata.__dict__["_message_id"] = "m"
        reply = client_app(msg, node.context)
        assert "declined" in reply.content.config_records
        assert len(reply.content.array_records) == 0


def test_a_restarted_node_rejoins_with_a_new_node_id(make_grid: Any) -> None:
    cfg = config.from_dict(
        SMALL
        | {"partition": SMALL["partition"] | {"opt_out": 0.0}}
        | {"fedavg": SMALL["fedavg"] | {"rounds": 3, "clients_per_round": 6}}
    )
    grid = make_grid(cfg)
    victim = list(grid.nodes.values())[3]
    replacement: list[FakeNode] = []

    def dies_after_round_0(msg: Message, context: Context) -> Message | None:
        if msg.metadata.message_type == "evaluate":  # validation of round 0
            victim.online = False
            replacement.append(grid.add_node({"partition-id": 3, "num-partitions": 6}))
            return None
        return honest(msg, context)

    victim.behaviour = dies_after_round_0
    res = run_federation(grid, cfg, OPTIONS)
    assert res["clients"] == list(range(6))
    assert [r["aggregated"] for r in res["flower"]["rounds"]] == [list(range(6))] * 3
    nodes = {n["client"]: n["node_id"] for n in res["flower"]["nodes"]}
    assert nodes[3] == replacement[0].node_id != victim.node_id
    # The replacement personalised and keeps its specialist and gate in its state.
    state = replacement[0].context.state
    moe = state.array_records[STATE_PREFIX + "moe"]
    assert {k.split(".")[0] for k in moe} == {"specialist", "gate"}
    assert victim.context.state.array_records.get(STATE_PREFIX + "moe") is None


def _boastful(msg: Message, context: Context) -> Message | None:
    """Claims a huge training set at hello (it would weigh its updates)."""
    reply = honest(msg, context)
    if reply is not None and msg.metadata.message_type == "query.hello":
        reply.content.config_records["node"]["num-train"] = 10**6
    return reply


def test_nodes_that_do_not_fit_the_run_are_refused(make_grid: Any) -> None:
    cfg = config.from_dict(SMALL | {"partition": SMALL["partition"] | {"opt_out": 0.0}})
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


def test_a_run_nobody_fits_fails_with_the_nodes_reasons(make_grid: Any) -> None:
    cfg = config.from_dict(SMALL)
    grid = make_grid(cfg, nodes=0)
    for i in range(2):  # e.g. `flwr run` with the default 2 simulated SuperNodes
        grid.add_node({"partition-id": i, "num-partitions": 2})
    with pytest.raises(RuntimeError, match=r"no node could be identified .*num-partitions=2"):
        run_federation(grid, cfg, OPTIONS)
