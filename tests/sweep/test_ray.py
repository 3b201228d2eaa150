"""`fedmoe sweep --ray`: a sweep's runs as Ray tasks on a real local Ray (loopback, two
CPUs): the same results as the local sweep, finished runs skipped, a failing run one
line; `--workers` with `--ray` refused."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from fedmoe.errors import FedmoeError
from fedmoe.sweep.runner import parse_axis, run_sweep

ray = pytest.importorskip("ray")

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")

TINY: dict[str, Any] = {
    "model": "mlp",
    "data": {"global_test_examples": 200},
    "partition": {"clients": 4, "train": 20, "val": 20, "test": 10, "p": 0.8},
    "federated": {"rounds": 2, "clients_per_round": 2, "local_epochs": 1, "lr": 1e-3},
    "personalise": {"epochs": 2, "lr": 1e-3},
    "method": {"moe": {"lr": 1e-3}},
}


def _rows(directory: Path) -> list[dict[str, str]]:
    with (directory / "sweep.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "run_dir"} for row in csv.DictReader(f)]


def test_a_sweep_on_ray_equals_the_local_sweep_and_skips_finished_runs(
    tmp_path: Path, local_ray: None
) -> None:
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    run_sweep(TINY, [parse_axis("p=0.5,1.0")], 1, local, log=lambda _: None)
    # One run finished before (by a local sweep); Ray runs only the other.
    run_sweep(TINY, [parse_axis("p=0.5")], 1, on_ray, log=lambda _: None)
    logs: list[str] = []
    run_sweep(TINY, [parse_axis("p=0.5,1.0")], 1, on_ray, log=logs.append, ray="local")
    assert logs[0] == "ray: 2 run(s) as tasks on 2 CPU(s)"
    assert sorted(logs[1:]) == [
        "[1/2] p=0.5 seed 0: finished before, skipped",
        "[2/2] p=1.0 seed 0: done",
    ]
    assert _rows(on_ray) == _rows(local) and len(_rows(local)) == 8
    assert ray.is_initialized()  # a Ray the caller started is left running


def test_a_run_that_fails_on_ray_is_one_line(tmp_path: Path, local_ray: None) -> None:
    bad = {**TINY, "dataset": f"npz:{tmp_path / 'missing.npz'}"}
    with pytest.raises(FedmoeError, match=r"^\[1/1\] base seed 0 failed on Ray: .*missing\.npz"):
        run_sweep(bad, [], 1, tmp_path / "out", log=lambda _: None, ray="local")
