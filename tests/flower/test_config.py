"""Flower's run config and node config onto fedmoe's config: the mapping and its errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from flwr.common.config import flatten_dict, parse_config_args

from fedmoe.errors import ConfigError
from fedmoe.experiment import config
from fedmoe.experiment.presets import preset
from fedmoe.flower.config import (
    FlowerOptions,
    NodeOptions,
    node_options,
    run_config,
    run_config_args,
    split_run_config,
)

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def app_defaults() -> dict[str, object]:
    data = tomllib.loads(PYPROJECT.read_text())
    return flatten_dict(data["tool"]["flwr"]["app"]["config"])


def test_pyproject_lists_every_key_with_the_quick_preset_as_defaults() -> None:
    # Flower drops --run-config keys that are not in the defaults, so all must be there.
    flat = app_defaults()
    cfg, options = split_run_config(flat)
    assert cfg == config.from_dict(preset("quick"))
    assert options == FlowerOptions()
    assert set(flat) == set(run_config(cfg, options))


def test_pyproject_declares_the_apps() -> None:
    app = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "fedmoe.flower.server_app:app",
        "clientapp": "fedmoe.flower.client_app:app",
    }


def test_run_config_round_trips_through_flwr_run_overrides() -> None:
    cfg = config.from_dict(
        {
            "data_dir": 'C:\\my data "x"',
            "partition": {"clients": 7, "p": 0.5},
            "fedavg": {"lr": 0.01},
        }
    )
    options = FlowerOptions(out="/tmp/it's here", round_timeout=12.5, min_nodes=3)
    args = run_config_args(run_config(cfg, options))
    assert split_run_config(app_defaults() | parse_config_args([args])) == (cfg, options)
    with pytest.raises(ValueError, match="both"):
        run_config_args({"out": "'\""})


def test_bad_run_config_values_give_one_line_errors() -> None:
    flat = app_defaults()
    with pytest.raises(ConfigError, match=r"unknown key 'partition\.client'"):
        split_run_config(flat | {"partition.client": 3})
    with pytest.raises(ConfigError, match=r"partition\.clients must be of type int"):
        split_run_config(flat | {"partition.clients": "ten"})
    with pytest.raises(ConfigError, match=r"unknown key flower\.'timeout'"):
        split_run_config(flat | {"flower.timeout": 3.0})
    with pytest.raises(ConfigError, match=r"flower\.round-timeout must be positive"):
        split_run_config(flat | {"flower.round-timeout": 0})
    with pytest.raises(ConfigError, match=r"flower\.min-nodes must be of type int"):
        split_run_config(flat | {"flower.min-nodes": 2.5})
    with pytest.raises(ConfigError, match=r"moe_staged\.enabled: the Flower app runs"):
        split_run_config(flat | {"moe_staged.enabled": True})
    with pytest.raises(ConfigError, match=r"moe_plus\.ablation: the Flower app fits MoE\+"):
        split_run_config(flat | {"moe_plus.enabled": True, "moe_plus.ablation": True})
    cfg, _ = split_run_config(flat | {"moe_plus.enabled": True})
    assert cfg.moe_plus.enabled
    with pytest.raises(ConfigError, match=r"centralised\.enabled: the Flower app runs"):
        split_run_config(flat | {"centralised.enabled": True})
    cfg, _ = split_run_config(flat | {"clustered.enabled": True})
    assert cfg.clustered.enabled


def test_node_config() -> None:
    node = node_options({"partition-id": 2, "num-partitions": 4, "opt-out": True})
    assert node == NodeOptions(partition_id=2, num_partitions=4, opt_out=True)
    cfg = config.from_dict({"partition": {"clients": 4}})
    assert node.check(cfg) is node


@pytest.mark.parametrize(
    ("node_config", "message"),
    [
        ({"num-partitions": 4}, "lacks partition-id"),
        ({"partition-id": 0}, "lacks num-partitions"),
        ({"partition-id": "0", "num-partitions": 4}, "partition-id must be of type int"),
        (
            {"partition-id": 0, "num-partitions": 4, "optout": True},
            "unknown key node config 'optout'",
        ),
        ({"partition-id": 0, "num-partitions": 4, "opt-out": 1}, "opt-out must be of type bool"),
    ],
)
def test_malformed_node_config_is_refused(node_config: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        node_options(node_config)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (NodeOptions(0, 5), "num-partitions=5 but the run has partition.clients=4"),
        (NodeOptions(4, 4), "partition-id=4 is outside 0..3"),
        (NodeOptions(0, 4, dataset="cifar10"), "dataset='cifar10' but the run has"),
        (NodeOptions(0, 4, scheme="iid"), "scheme='iid' but the run has"),
        (NodeOptions(0, 4, seed=7), "seed=7 but the run has seed=0"),
    ],
)
def test_a_node_refuses_a_run_it_does_not_fit(node: NodeOptions, message: str) -> None:
    cfg = config.from_dict({"partition": {"clients": 4}})
    with pytest.raises(ConfigError, match=message):
        node.check(cfg)
