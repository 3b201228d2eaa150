"""Flower's Simulation Engine (Ray backend) for real, against the embedded simulator.

A SuperLink in simulation mode runs the app with 10 simulated SuperNodes and every
method that runs on nodes: 2 rounds of FedAvg and 2 of IFCA with 2 cluster models, then
Local, FT, MoE, staged MoE, MoE+ with its ablation and `moe-ifca`
(`flwr run <repo> ... --federation-config num-supernodes=10`); the same config runs in
this process with `run_experiment`. The partition must be identical (each node reports
a SHA-256 of its train/val/test rows) and so must each federated method's schedule, the
epochs and IFCA's choices.

Tolerance on accuracies: 0.05 on a client's local-test accuracy (1 of its 20 examples)
and 0.002 on its global-test accuracy (2 of the global test set's first 1,000 examples,
``data.global_test_examples``); validation losses to a
relative 1e-4. Why: both runs follow the same random streams per client, so the only
difference is float32 rounding of one-client kernels (Flower nodes train at K=1) versus
batched cohort kernels (grouped convolutions): parameters differ by about 1e-7..1e-5
after an epoch and validation losses by about 1e-8 (measured). That can flip a
prediction only where the two top classes' log-probabilities are within about 1e-5 of
each other, which a few of the 1,000 global-test examples may be and the 20 local ones
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
from fedmoe.experiment.prepare import partition_spec
from fedmoe.experiment.run import run_experiment
from fedmoe.flower.config import FlowerOptions, run_config, run_config_args

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")

CLIENTS = 10
METHODS = ["fedavg", "local", "finetune", "moe", "moe-staged", "moe-plus", "ifca", "moe-ifca"]
CONFIG: dict[str, Any] = {
    "methods": METHODS,
    "data": {"global_test_examples": 1000},
    "partition": {"clients": CLIENTS, "train": 20, "val": 20, "test": 20, "opt_out": 0.2},
    "federated": {"rounds": 2, "clients_per_round": 4, "local_epochs": 2, "lr": 1e-3},
    "personalise": {"epochs": 4, "lr": 1e-3, "stopping": {"check_every": 2, "patience": 1}},
    "method": {
        "moe": {"lr": 1e-3},
        "moe-staged": {"lr": 1e-3},
        "moe-plus": {"ablation": True},
        "ifca": {"models": 2},
    },
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
    # Same provenance record, plus Flower's version.
    import flwr

    assert flower["versions"] == {**embedded["versions"], "flwr": flwr.__version__}

    # Same schedules, same stopping decisions, for each federated method.
    assert list(flower["methods"]) == list(embedded["methods"]) == METHODS
    f_methods, e_methods = flower["methods"], embedded["methods"]
    for name in ("fedavg", "ifca"):
        f_fed, e_fed = f_methods[name]["federation"], e_methods[name]["federation"]
        f_hist, e_hist = f_fed["history"], e_fed["history"]
        assert [h["clients"] for h in f_hist] == [h["clients"] for h in e_hist]
        assert [h.get("clusters") for h in f_hist] == [h.get("clusters") for h in e_hist]
        for f, e in zip(f_hist, e_hist, strict=True):
            assert (f["val_loss"] is None) == (e["val_loss"] is None)
            if e["val_loss"] is not None:
                assert math.isclose(f["val_loss"], e["val_loss"], rel_tol=LOSS_RTOL)
        assert (f_fed["best_round"], f_fed["rounds_run"]) == (
            e_fed["best_round"],
            e_fed["rounds_run"],
        )
        rows = flower["flower"]["rounds"][name]
        assert [r["aggregated"] for r in rows] == [h["clients"] for h in e_hist]
    for name in METHODS:
        assert f_methods[name]["epochs"] == e_methods[name]["epochs"], name
    assert f_methods["ifca"]["details"] == e_methods["ifca"]["details"]
    assert list(f_methods["moe-plus"]["variants"]) == list(e_methods["moe-plus"]["variants"])

    # Accuracies within the tolerance stated above, moe-plus's variants' too.
    compared = []
    for name in METHODS:
        pairs = [(name, f_methods[name], e_methods[name])]
        for label, variant in f_methods[name].get("variants", {}).items():
            pairs.append((f"{name} ({label})", variant, e_methods[name]["variants"][label]))
        for what, f_entry, e_entry in pairs:
            for split, tol in (("local_test", LOCAL_TOL), ("global_test", GLOBAL_TOL)):
                f_acc = f_entry[split]["per_client"]
                e_acc = e_entry[split]["per_client"]
                worst = max(abs(a - b) for a, b in zip(f_acc, e_acc, strict=True))
                assert worst <= tol, (what, split, f_acc, e_acc)
            compared.append(what)
    assert len(compared) > len(METHODS)
    assert flower["flower"]["lost_clients"] == [] and flower["flower"]["rejected"] == []
    assert set(flower["flower"]["client_threads"].values()) == {1}
