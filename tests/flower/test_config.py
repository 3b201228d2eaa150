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
from fedmoe.methods import registry

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


#: A flat run config, as Flower holds it.
Flat = dict[str, bool | int | float | str]


def app_defaults() -> Flat:
    data = tomllib.loads(PYPROJECT.read_text())
    return flatten_dict(data["tool"]["flwr"]["app"]["config"])


#: Every built-in method that runs on Flower nodes, in an order the registry accepts.
NODE_METHODS = (
    "fedavg",
    "local",
    "finetune",
    "moe",
    "moe-staged",
    "moe-plus",
    "ifca",
    "moe-ifca",
    "fedprox",
    "ditto",
    "per-fedavg",
    "pfl-moe",
    "apfl",
    "pfedme",
    "fedper",
    "fedrep",
    "lg-fedavg",
    "fedbabu",
    "moe-ditto",
    "moe-plus-fedbabu",
)


def test_pyproject_lists_every_key_with_the_quick_preset_as_defaults() -> None:
    # Flower drops --run-config keys that are not in the defaults, so all must be there:
    # the keys of a run listing every method that runs on nodes.
    flat = app_defaults()
    cfg, options = split_run_config(flat)
    assert cfg == config.from_dict(preset("quick"))
    assert options == FlowerOptions()
    every = config.from_dict(preset("quick") | {"methods": list(NODE_METHODS)})
    assert set(flat) == set(run_config(every, options))
    assert not any(k.startswith("method.centralised.") for k in flat)
    # NODE_METHODS are exactly the registered methods nodes can run.
    refused = {n for n in registry.names() if registry.get(n).node_support(None) is not None}
    assert set(registry.names()) - refused == set(NODE_METHODS) and refused == {"centralised"}


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
            "methods": ["fedavg", "local", "finetune", "moe", "moe-plus", "ifca", "moe-ifca"],
            "partition": {"clients": 7, "p": 0.5},
            "federated": {"lr": 0.01},
            "method": {"moe-plus": {"ablation": True, "prior": False}, "ifca": {"models": 2}},
        }
    )
    options = FlowerOptions(out="/tmp/it's here", round_timeout=12.5, min_nodes=3)
    args = run_config_args(run_config(cfg, options))
    assert split_run_config(app_defaults() | parse_config_args([args])) == (cfg, options)
    with pytest.raises(ValueError, match="both"):
        run_config_args({"out": "'\""})


def test_the_run_config_selects_methods_and_their_options() -> None:
    flat = app_defaults()
    cfg, _ = split_run_config(
        flat
        | {
            "methods": "fedavg, local,finetune,moe,moe-staged,moe-plus",
            "method.moe-plus.ablation": True,
            "method.moe-staged.lr": 0.01,
        }
    )
    assert cfg.methods == ("fedavg", "local", "finetune", "moe", "moe-staged", "moe-plus")
    assert cfg.options("moe-plus").ablation and cfg.options("moe-staged").lr == 0.01
    # The sections pyproject.toml lists for methods the run does not list are dropped.
    assert cfg.options("ifca") is None and cfg.options("moe-ifca") is None


def _one_line_error(flat: Flat, match: str) -> str:
    with pytest.raises(ConfigError, match=match) as info:
        split_run_config(flat)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_bad_run_config_values_give_one_line_errors() -> None:
    flat = app_defaults()
    _one_line_error(flat | {"partition.client": 3}, r"unknown key 'partition\.client'")
    _one_line_error(flat | {"partition.clients": "ten"}, r"partition\.clients must be of type int")
    _one_line_error(flat | {"flower.timeout": 3.0}, r"unknown key flower\.'timeout'")
    _one_line_error(flat | {"flower.round-timeout": 0}, r"flower\.round-timeout must be positive")
    _one_line_error(flat | {"flower.min-nodes": 2.5}, r"flower\.min-nodes must be of type int")
    _one_line_error(flat | {"methods": "fedavg,moe"}, r"method 'moe' needs 'finetune'")
    _one_line_error(flat | {"methods": "fedavg,fedmoe"}, r"unknown method 'fedmoe'")
    _one_line_error(flat | {"method.ifca.models": 1, "methods": "ifca"}, r"method\.ifca\.models")


def test_a_run_listing_centralised_is_refused_with_one_line() -> None:
    flat = app_defaults() | {"methods": "fedavg,local,finetune,moe,centralised"}
    message = _one_line_error(flat, r"method 'centralised' cannot run on Flower nodes")
    assert "fedmoe run" in message
    # Also when it is the only method, and with options of its own on the command line.
    _one_line_error(
        flat | {"methods": "centralised", "method.centralised.epochs": 3},
        r"method 'centralised' cannot run on Flower nodes",
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("fedavg.lr", 0.01, r"\[fedavg\] is from an older fedmoe config: .*\[federated\]"),
        ("personalise.moe_lr", 0.01, r"personalise\.moe_lr is from an older .*method\.moe\.lr"),
        ("moe_plus.enabled", True, r"\[moe_plus\] is from an older .*\"moe-plus\" in methods"),
        ("moe_staged.enabled", True, r"\[moe_staged\] is from an older .*\"moe-staged\""),
        ("clustered.enabled", True, r"\[clustered\] is from an older .*\"ifca\""),
        ("centralised.enabled", True, r"\[centralised\] is from an older .*\"centralised\""),
    ],
)
def test_format_one_keys_give_one_line_errors(key: str, value: bool | float, message: str) -> None:
    _one_line_error(app_defaults() | {key: value}, message)


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
