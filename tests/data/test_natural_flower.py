"""A natural partition (a CSV's client-id column) through the Flower app in-process
(FakeGrid, no Flower processes): each node holds its client's rows, and the federation
equals the embedded run."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from userfiles import PAPER, natural_config, write_sites_csv

from fedmoe.data import clear_cache
from fedmoe.experiment import config
from fedmoe.experiment.prepare import prepare
from fedmoe.experiment.run import run_experiment

pytest.importorskip("flwr")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flower"))


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def sites_csv(tmp_path: Path) -> Path:
    return write_sites_csv(tmp_path)


def _flower_cfg(sites_csv: Path) -> config.ExperimentConfig:
    return natural_config(
        f"csv:{sites_csv}",
        dtype="float64",
        data={"client": "site"},
        partition={"clients": 4, "opt_out": 0.25},
    )


def _run_flower(cfg: config.ExperimentConfig) -> dict[str, Any]:
    import torch
    from fakegrid import FakeGrid

    from fedmoe.flower.config import FlowerOptions, run_config
    from fedmoe.flower.server_app import run_federation

    options = FlowerOptions(
        round_timeout=1.0, personalise_timeout=1.0, join_timeout=1.0, poll_interval=0.01
    )
    threads = torch.get_num_threads()
    grid = FakeGrid(run_config(cfg, options))
    try:
        for i in range(cfg.partition.clients):
            grid.add_node({"partition-id": i, "num-partitions": cfg.partition.clients})
        return run_federation(grid, cfg, options)
    finally:
        grid.close()
        torch.set_num_threads(threads)


def test_a_node_holds_its_clients_rows(sites_csv: Path) -> None:
    from fedmoe.flower.config import NodeOptions
    from fedmoe.flower.node_data import load_node_data

    cfg = _flower_cfg(sites_csv)
    prep = prepare(cfg)
    for k, client in enumerate(prep.partition.clients):
        node = load_node_data(cfg, NodeOptions(k, 4))
        assert node.scheme == "natural" and node.client == k
        sizes = (int(node.train.n[0]), int(node.val.n[0]), int(node.test.n[0]))
        assert sizes == (len(client.train), len(client.val), len(client.test))
        assert node.opt_out == bool(prep.partition.opt_out[k])
        assert node.global_test.capacity == len(prep.dataset.y_test)
        rows = node.train.index[0, : node.train.n[0]]
        np.testing.assert_array_equal(
            node.train.x[rows].numpy(),
            prep.train.x[prep.train.index[k, : prep.train.n[k]]].numpy(),
        )


def test_the_flower_app_equals_the_embedded_run(sites_csv: Path) -> None:
    cfg = _flower_cfg(sites_csv)
    flower = _run_flower(cfg)
    embedded = run_experiment(cfg)
    assert flower["flower"]["refused_nodes"] == {}
    for name in PAPER:
        assert flower["methods"][name] == embedded["methods"][name], name
    assert flower["partition"]["opt_out"] == embedded["partition"]["opt_out"]
    assert flower["partition"]["majority"] == embedded["partition"]["majority"]
