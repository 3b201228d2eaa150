"""Configuration: every bad value is a one-line ConfigError; overrides and TOML round-trip."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from fedmoe.errors import ConfigError
from fedmoe.experiment import config
from fedmoe.experiment.presets import PRESETS, preset


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bogus": 1}, "unknown key 'bogus'"),
        ({"partition": {"clientz": 3}}, "unknown key 'partition.clientz'"),
        ({"partition": {"clients": "many"}}, "partition.clients must be of type int"),
        ({"partition": {"clients": True}}, "partition.clients must be an integer"),
        ({"partition": {"p": 1.5}}, r"partition.p must be in \[0, 1\]"),
        ({"partition": {"scheme": "random"}}, "partition.scheme must be one of"),
        ({"partition": {"train": 0}}, "partition.train must be at least 1"),
        ({"partition": {"opt_out": 1.0}}, "partition.opt_out"),
        ({"partition": 3}, "partition must be a table"),
        ({"fedavg": {"lr": -1}}, "fedavg.lr must be positive"),
        ({"fedavg": {"optimizer": "rmsprop"}}, "fedavg.optimizer must be one of"),
        ({"fedavg": {"stopping": {"patience": 0}}}, "fedavg.stopping.patience"),
        ({"personalise": {"pool": "sum"}}, "personalise.pool must be one of"),
        ({"personalise": {"epochs": 1.5}}, "personalise.epochs must be of type int"),
        ({"device": "tpu"}, "device must be"),
        ({"dropout": 1.0}, "dropout"),
        ({"moe_plus": {"inputs": "pixels"}}, "moe_plus.inputs must be one of"),
        ({"moe_plus": {"lr": 0}}, "moe_plus.lr must be positive"),
        (
            {"moe_plus": {"enabled": True}, "partition": {"val": 1}},
            r"needs partition.val >= 2",
        ),
        ({"personalise": {"moe_schedule": "both"}}, "personalise.moe_schedule must be one of"),
        ({"centralised": {"batch_size": 0}}, "centralised.batch_size must be at least 1"),
        ({"clustered": {"models": 1}}, "clustered.models must be at least 2"),
        (
            {"moe_staged": {"enabled": True}, "personalise": {"moe_schedule": "staged"}},
            "moe_staged.enabled compares",
        ),
        (
            {"clustered": {"enabled": True}, "partition": {"val": 1}},
            r"needs partition.val >= 2",
        ),
    ],
)
def test_bad_values_are_one_line_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        config.from_dict(data)
    assert "\n" not in str(info.value)


def test_ints_are_accepted_for_floats_and_defaults_fill_in() -> None:
    cfg = config.from_dict({"partition": {"p": 1}, "fedavg": {"lr": 1}})
    assert cfg.partition.p == 1.0 and isinstance(cfg.partition.p, float)
    assert cfg.partition.clients == 100


def test_overrides_parse_toml_literals_and_reject_bad_syntax() -> None:
    data = config.apply_overrides(
        {"partition": {"p": 0.5}},
        [
            "partition.p=0.9",
            "partition.overlap=false",
            "dataset=mnist",
            "fedavg.stopping.patience=3",
        ],
    )
    cfg = config.from_dict(data)
    assert cfg.partition.p == 0.9 and cfg.partition.overlap is False
    assert cfg.dataset == "mnist" and cfg.fedavg.stopping.patience == 3
    with pytest.raises(ConfigError, match="key=value"):
        config.apply_overrides({}, ["partition.p"])
    with pytest.raises(ConfigError, match="not a section"):
        config.apply_overrides({"seed": 1}, ["seed.x=2"])


def test_toml_round_trip_and_file_errors(tmp_path: Path) -> None:
    cfg = config.from_dict(preset("paper"))
    text = config.dumps_toml(config.to_dict(cfg))
    assert config.from_dict(tomllib.loads(text)) == cfg
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert config.from_dict(config.load(path)) == cfg
    path.write_text("partition = [")
    with pytest.raises(ConfigError, match="invalid TOML"):
        config.load(path)
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "missing.toml")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid(name: str) -> None:
    cfg = config.from_dict(preset(name))
    assert cfg.dataset == "fashion-mnist"
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("nope")


def test_paper_preset_has_the_reference_sizes() -> None:
    cfg = config.from_dict(preset("paper"))
    p, f, q = cfg.partition, cfg.fedavg, cfg.personalise
    assert (p.clients, p.train, p.val, p.test) == (100, 100, 200, 200)
    assert (f.clients_per_round, f.local_epochs, f.batch_size, f.lr) == (5, 3, 10, 5e-5)
    assert (q.lr, q.moe_lr, q.stopping.check_every, q.stopping.patience, q.stopping.min_delta) == (
        5e-5,
        1e-5,
        5,
        10,
        0.01,
    )
