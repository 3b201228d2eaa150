"""Flower's Simulation Engine (Ray backend) for real, against the embedded simulator.

A SuperLink in simulation mode runs the app with 10 simulated SuperNodes for 2 rounds
of FedAvg and 2 of IFCA with 2 cluster models, with MoE+ and `moe-ifca`
(`flwr run <repo> ... --federation-config num-supernodes=10`); the same config runs in
this process with `run_experiment`. The partition must be identical (each node reports
a SHA-256 of its train/val/test rows) and so must the FedAvg schedule and the epochs.

Tolerance on accuracies: 0.05 on a client's local-test accuracy (1 of its 20 examples)
and 0.002 on its global-test accuracy (20 of 10,000 examples); validation losses to a
relative 1e-4. Why: both runs follow the same random streams per client, so the only
difference is float32 rounding of one-client kernels (Flower nodes train at K=1) versus
batched cohort kernels (grouped convolutions): parameters differ by about 1e-7..1e-5
after an epoch and validation losses by about 1e-8 (measured). That can flip a
prediction only where the two top classes' log-probabilities are within about 1e-5 of
each other, which a few of the 10,000 global-test examples may be and the 20 local ones
practically never are. In practice the accuracies come out identical. Any real
divergence (a wrong partition row, random key, normalisation, initialisation or
aggregation weight) moves accuracies by far more and is caught by the exact checks.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from stack import Stack, wait_for

from fedmoe.data import load_dataset, make_partition
from fedmoe.experiment import config
from fedmoe.experiment.protocol import METHODS, partition_spec, run_experiment
from fedmoe.flower.config import FlowerOptions, run_config, run_config_args

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")

CLIENTS = 10
CONFIG: dict[str, Any] = {
    "partition": {"clients": CLIENTS, "train": 20, "val": 20, "test": 20, "opt_out": 0.2},
    "fedavg": {"rounds": 2, "clients_per_round": 4, "local_epochs": 2, "lr": 1e-3},
    "personalise": {
        "epochs": 4,
        "lr": 1e-3,
        "moe_lr": 1e-3,
        "stopping": {"check_every": 2, "patience": 1},
    },
    "moe_plus": {"enabled": True},
    "clustered": {"enabled": True, "models": 2},
}
LOCAL_TOL, GLOBAL_TOL, LOSS_RTOL = 0.05, 0.002, 1e-4


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_simulation_matches_embedded_run(tmp_path: Path, one_thread: None) -> None:
    cfg = config.from_dict(CONFIG)
    out = tmp_path / "out"
    options = FlowerOptions(out=str(out), round_timeout=300.0, personalise_timeout=300.0)
    with Stack(tmp_path) as stack:
        stack.superlink(simulation=True)
        run = stack.flwr_run(
            run_config_args(run_config(cfg, options)),
            ["--federation-config", f"num-supernodes={CLIENTS} client-resources-num-cpus=1"],
        )
        # The embedded run meanwhile, in this process.
        embedded = run_experiment(cfg)
        wait_for(lambda: run.popen.poll() is not None, 400, "the run to end", stack.procs)
        leftover = stack.close()
    assert leftover == []
    assert (out / "results.json").exists(), run.tail()
    flower = json.loads((out / "results.json").read_text())

    # Same partition: every node holds exactly its client's rows.
    assert flower["clients"] == list(range(CLIENTS))
    ds = load_dataset(cfg.dataset)
    part = make_partition(
        partition_spec(cfg.partition), ds.y_train, ds.y_test, 10, cfg.seed, cfg.partition.opt_out
    )
    for node, client in zip(flower["flower"]["nodes"], part.clients, strict=True):
        digest = hashlib.sha256()
        for rows in (client.train, client.val, client.test):
            digest.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
        assert node["digest"] == digest.hexdigest()
    assert flower["partition"]["opt_out"] == embedded["partition"]["opt_out"]
    assert flower["partition"]["majority"] == embedded["partition"]["majority"]
    assert flower["partition"]["params"] == embedded["partition"]["params"]

    # Same schedule, same stopping decisions.
    f_hist, e_hist = flower["fedavg"]["history"], embedded["fedavg"]["history"]
    assert [h["clients"] for h in f_hist] == [h["clients"] for h in e_hist]
    for f, e in zip(f_hist, e_hist, strict=True):
        assert (f["val_loss"] is None) == (e["val_loss"] is None)
        if e["val_loss"] is not None:
            assert math.isclose(f["val_loss"], e["val_loss"], rel_tol=LOSS_RTOL)
    assert flower["fedavg"]["best_round"] == embedded["fedavg"]["best_round"]
    assert flower["epochs"] == embedded["epochs"]

    # Accuracies within the tolerance stated above.
    assert set(flower["methods"]) == {*METHODS, "moe-plus", "ifca", "moe-ifca"}
    assert flower["clustered"] == embedded["clustered"]
    for name in flower["methods"]:
        for split, tol in (("local_test", LOCAL_TOL), ("global_test", GLOBAL_TOL)):
            f_acc = flower["methods"][name][split]["per_client"]
            e_acc = embedded["methods"][name][split]["per_client"]
            worst = max(abs(a - b) for a, b in zip(f_acc, e_acc, strict=True))
            assert worst <= tol, (name, split, f_acc, e_acc)
    assert set(flower["flower"]["client_threads"].values()) == {1}
