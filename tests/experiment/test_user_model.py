"""A user's own nn.Module (not one of fedmoe's) through ``fedmoe run`` and the Flower
app, and a mixture of experts of two different architectures."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedmoe.cli import main
from fedmoe.errors import ConfigError
from fedmoe.experiment import config
from fedmoe.experiment.run import run_experiment

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")

USER_MODELS = '''
import math
from torch import nn


class Small(nn.Module):
    """A user's classifier: not one of fedmoe's networks."""

    def __init__(self, inputs, outputs):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(inputs, 32), nn.Tanh())
        self.out = nn.Linear(32, outputs)

    def forward(self, x):
        return self.out(self.body(x))


def make_model(input_shape, num_outputs):
    return Small(math.prod(input_shape), num_outputs)
'''


def _hospitals(root: Path) -> str:
    """Four clients' files (clients/<id>.npz), each with its own label mix."""
    gen = np.random.default_rng(0)
    centres = gen.normal(size=(3, 12))
    (root / "clients").mkdir(parents=True)
    for name in ("north", "south", "east", "west"):
        mix = gen.dirichlet([0.5, 0.5, 0.5])
        arrays = {}
        for split, n in (("train", 40), ("test", 20)):
            y = gen.choice(3, size=n, p=mix)
            arrays[f"x_{split}"] = (centres[y] + gen.normal(size=(n, 12))).astype(np.float32)
            arrays[f"y_{split}"] = y
        np.savez(root / "clients" / f"{name}.npz", **arrays)
    return f"clients:{root}"


def natural(tmp_path: Path) -> dict[str, Any]:
    """SMALL on naturally partitioned data: the clients are the files'."""
    return SMALL | {
        "dataset": _hospitals(tmp_path / "hospitals"),
        "partition": {"scheme": "natural", "clients": 4, "opt_out": 0.25},
    }


SMALL: dict[str, Any] = {
    "model": "fedmoe_user_models:make_model",
    "dtype": "float64",
    "partition": {"clients": 4, "train": 20, "val": 20, "test": 20, "opt_out": 0.25},
    "federated": {"rounds": 2, "clients_per_round": 2, "local_epochs": 1, "lr": 1e-3},
    "personalise": {"epochs": 2, "lr": 1e-3, "stopping": {"check_every": 1, "patience": 1}},
    "method": {"moe": {"lr": 1e-3}},
}


@pytest.fixture(autouse=True)
def user_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "fedmoe_user_models.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "fedmoe_user_models", raising=False)


@pytest.mark.parametrize("data", ["fashion-mnist", "natural"])
def test_a_user_module_runs_every_paper_method_through_fedmoe_run(
    tmp_path: Path, data: str
) -> None:
    cfg_file = tmp_path / "user.toml"
    cfg_file.write_text(config.dumps_toml(SMALL if data == "fashion-mnist" else natural(tmp_path)))
    main(["run", "--config", str(cfg_file), "--out", str(tmp_path / "out"), "--quiet"])
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(res["methods"]) == ["fedavg", "local", "finetune", "moe"]
    assert res["dataset"]["model"] == "fedmoe_user_models:make_model"
    inputs, classes = (784, 10) if data == "fashion-mnist" else (12, 3)
    assert res["dataset"]["model_params"] == inputs * 32 + 32 + 32 * classes + classes
    for entry in res["methods"].values():
        assert 0.0 <= entry["local_test"]["mean"] <= 1.0


@pytest.mark.parametrize("data", ["fashion-mnist", "natural"])
def test_a_user_module_on_the_flower_app_equals_the_simulator(tmp_path: Path, data: str) -> None:
    pytest.importorskip("flwr")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flower"))
    from fakegrid import FakeGrid

    from fedmoe.flower.config import FlowerOptions, run_config
    from fedmoe.flower.server_app import run_federation

    options = FlowerOptions(
        round_timeout=1.0, personalise_timeout=1.0, join_timeout=1.0, poll_interval=0.01
    )
    cfg = config.from_dict(SMALL if data == "fashion-mnist" else natural(tmp_path))
    grid = FakeGrid(run_config(cfg, options))
    try:
        for i in range(cfg.partition.clients):
            grid.add_node({"partition-id": i, "num-partitions": cfg.partition.clients})
        flower = run_federation(grid, cfg, options)
    finally:
        grid.close()
    embedded = run_experiment(cfg)
    for name in cfg.methods:
        for key in ("local_test", "global_test", "gate", "epochs"):
            assert flower["methods"][name].get(key) == embedded["methods"][name].get(key), name


def test_experts_of_two_different_architectures_mix() -> None:
    # The specialist is fedmoe's fused MLP, the global expert and the gate the user's.
    mixed = SMALL | {
        "specialist_model": "mlp",
        "method": {"moe": {"lr": 1e-3, "specialist": "fresh"}},
    }
    res = run_experiment(config.from_dict(mixed))
    gate = res["methods"]["moe"]["gate"]["local_test"]["all"]
    assert len(gate) == 4 and all(0.0 < g < 1.0 for g in gate)
    # FT's models are the user's architecture: they cannot start an MLP specialist.
    with pytest.raises(ConfigError, match=r"set method\.moe\.specialist = .fresh."):
        config.from_dict(SMALL | {"specialist_model": "mlp"})
