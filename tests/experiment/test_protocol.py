"""The protocol end to end on real Fashion-MNIST, at a small scale."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedmoe.cli import main
from fedmoe.errors import PartitionError
from fedmoe.experiment import config
from fedmoe.experiment.protocol import METHODS, run_experiment
from fedmoe.experiment.results import write_results

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fashion_mnist = pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")

SMALL: dict[str, Any] = {
    "partition": {"clients": 6, "train": 30, "val": 20, "test": 20, "p": 0.8, "opt_out": 0.5},
    "fedavg": {"rounds": 3, "clients_per_round": 2, "local_epochs": 1, "lr": 1e-3},
    "personalise": {
        "epochs": 4,
        "lr": 1e-3,
        "moe_lr": 1e-3,
        "stopping": {"check_every": 2, "patience": 1},
    },
}


@needs_fashion_mnist
def test_small_run_is_complete_deterministic_and_respects_opt_out(tmp_path: Path) -> None:
    cfg = config.from_dict(SMALL)
    first = run_experiment(cfg)
    second = run_experiment(cfg)
    for name in METHODS:
        for split in ("local_test", "global_test"):
            accs = first["methods"][name][split]["per_client"]
            assert len(accs) == 6 and all(0.0 <= a <= 1.0 for a in accs)
            assert accs == second["methods"][name][split]["per_client"]
    # FedAvg is one model: its global-test accuracy is the same for every client.
    assert len(set(first["methods"]["fedavg"]["global_test"]["per_client"])) == 1
    opted_out = {i for i, flag in enumerate(first["partition"]["opt_out"]) if flag}
    assert len(opted_out) == 3
    for record in first["fedavg"]["history"]:
        assert not set(record["clients"]) & opted_out
    gate = first["gate"]["local_test"]
    assert all(0.0 < g < 1.0 for g in gate["all"])
    write_results(first, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["methods"] == first["methods"]
    assert "| MoE (probability pool) |" in (tmp_path / "results.md").read_text()
    assert config.from_dict(config.load(tmp_path / "config.toml")) == cfg


EXTRAS: dict[str, Any] = {
    "moe_plus": {"enabled": True, "ablation": True},
    "centralised": {"enabled": True, "epochs": 3},
    "clustered": {"enabled": True, "models": 2},
    "moe_staged": {"enabled": True},
}


@pytest.fixture(scope="module")
def with_extras() -> dict[str, Any]:
    """A small run with every extra method (as the ``paper-plus`` preset has them)."""
    return run_experiment(config.from_dict(SMALL | EXTRAS))


@needs_fashion_mnist
def test_extra_methods_staged_plus_clustered_and_the_centralised_bound(
    tmp_path: Path, with_extras: dict[str, Any]
) -> None:
    res = with_extras
    extras = ["moe-staged", "moe-plus", "ifca", "moe-ifca", "centralised"]
    assert list(res["methods"]) == [*METHODS, *extras]
    assert len(res["ablation"]) == 7
    best = res["ablation"]["global features, held-out, calibrated, prior, adjusted global"]
    assert best["local_test"] == res["methods"]["moe-plus"]["local_test"]
    assert best["gate"] == res["gate_plus"]
    assert all(0.0 < g < 1.0 for g in res["gate_plus"]["global_test"]["all"])
    # The centralised model is one model: one global-test accuracy for every client.
    assert len(set(res["methods"]["centralised"]["global_test"]["per_client"])) == 1
    assert len(res["epochs"]["moe-plus"]) == 6  # clients
    # The staged MoE trains the gate alone, then jointly: at least 2 epochs per client.
    assert min(res["epochs"]["moe-staged"]) >= 2
    assert res["methods"]["moe-staged"] != res["methods"]["moe"]
    assert set(res["gate_staged"]) == {"local_test", "global_test"}
    # IFCA: every client evaluated with the one of 2 models it chose on validation.
    clustered = res["clustered"]
    assert sum(clustered["clients_per_model"]) == 6
    assert set(clustered["model_of_client"]) <= {0, 1}
    assert len(res["epochs"]["moe-ifca"]) == 6
    assert all(0.0 <= g <= 1.0 for g in res["gate_ifca"]["local_test"]["all"])
    write_results(res, tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert "| MoE+ |" in table and "| Centralised |" in table and "| MoE+ IFCA |" in table


@needs_fashion_mnist
def test_clustered_alone_gives_the_same_moe_ifca(with_extras: dict[str, Any]) -> None:
    # What the `moe-ifca` preset adds to `paper`: cluster models, no MoE+ or others.
    res = run_experiment(config.from_dict(SMALL | {"clustered": EXTRAS["clustered"]}))
    assert list(res["methods"]) == [*METHODS, "ifca", "moe-ifca"]
    for name in res["methods"]:
        assert res["methods"][name] == with_extras["methods"][name], name
    assert res["gate_ifca"] == with_extras["gate_ifca"]


@needs_fashion_mnist
def test_inconsistent_sizes_fail_before_training() -> None:
    cfg = config.from_dict({"partition": {"clients": 1000, "train": 100, "val": 200}})
    with pytest.raises(PartitionError, match="exceed"):
        run_experiment(cfg)


@needs_fashion_mnist
def test_cli_run_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = tmp_path / "small.toml"
    cfg_file.write_text(config.dumps_toml(SMALL))
    main(
        [
            "run",
            "--config",
            str(cfg_file),
            "--set",
            "seed=3",
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    for label in ("FedAvg", "Local", "FT", "MoE"):
        assert f"| {label}" in out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["config"]["seed"] == 3
