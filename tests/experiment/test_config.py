"""Configuration: every bad value is a one-line ConfigError; overrides and TOML round-trip."""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedmoe.errors import ConfigError
from fedmoe.experiment import config
from fedmoe.experiment.presets import PRESETS, compose, preset
from fedmoe.methods import registry
from fedmoe.methods.builtin import DEFAULT_METHODS
from fedmoe.methods.moe import MoeOptions

EXTRA = ["fedavg", "local", "finetune", "moe", "moe-staged", "moe-plus", "ifca", "moe-ifca"]


def _one_line_error(data: dict[str, Any], message: str) -> str:
    with pytest.raises(ConfigError, match=message) as info:
        config.from_dict(data)
    assert "\n" not in str(info.value)
    return str(info.value)


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
        ({"federated": {"lr": -1}}, "federated.lr must be positive"),
        ({"federated": {"optimizer": "rmsprop"}}, "federated.optimizer must be one of"),
        ({"federated": {"stopping": {"patience": 0}}}, "federated.stopping.patience"),
        ({"federated": {"checkpoint_every": 0}}, "federated.checkpoint_every must be at least"),
        ({"personalise": {"epochs": 1.5}}, "personalise.epochs must be of type int"),
        ({"personalise": {"stopping": {"check_every": 0}}}, "personalise.stopping.check_every"),
        ({"method": {"moe": {"pool": "sum"}}}, "method.moe.pool must be one of"),
        ({"method": {"moe": {"lr": 0}}}, "method.moe.lr must be positive"),
        ({"method": {"moe": {"schedule": "both"}}}, "method.moe.schedule must be one of"),
        ({"method": {"moe": {"bogus": 1}}}, "unknown key 'method.moe.bogus'"),
        ({"method": {"moe": 3}}, "method.moe must be a table"),
        ({"method": 3}, "method must be a table of method sections"),
        ({"device": "tpu"}, "device must be"),
        ({"dropout": 1.0}, "dropout"),
        ({"methods": []}, "methods must list at least one method"),
        ({"methods": "fedavg,fedavg"}, "methods lists 'fedavg' twice"),
        ({"methods": [1, 2]}, "methods must be a list of strings"),
        (
            {"methods": EXTRA, "method": {"moe-plus": {"inputs": "pixels"}}},
            "method.moe-plus.inputs must be one of",
        ),
        ({"methods": EXTRA, "method": {"moe-plus": {"lr": 0}}}, "method.moe-plus.lr must be"),
        ({"methods": EXTRA, "partition": {"val": 1}}, r"method.moe-plus.data = 'heldout'.*>= 2"),
        (
            {"methods": EXTRA, "method": {"moe-plus": {"data": "train"}}, "partition": {"val": 1}},
            r"method.moe-ifca.data = 'heldout'.*partition.val >= 2",
        ),
        (
            {"methods": ["centralised"], "method": {"centralised": {"batch_size": 0}}},
            "method.centralised.batch_size must be at least 1",
        ),
        (
            {"methods": ["ifca"], "method": {"ifca": {"models": 1}}},
            "method.ifca.models must be at least 2",
        ),
        (
            {"methods": EXTRA, "method": {"moe-ifca": {"ablation": True}}},
            "unknown key 'method.moe-ifca.ablation'",
        ),
    ],
)
def test_bad_values_are_one_line_errors(data: dict[str, Any], message: str) -> None:
    _one_line_error(data, message)


@pytest.mark.parametrize(
    ("data", "what", "instead"),
    [
        ({"fedavg": {"lr": 1e-3}}, "[fedavg]", "[federated]"),
        ({"moe_plus": {"enabled": True}}, "[moe_plus]", "[method.moe-plus]"),
        ({"moe_plus": {"ablation": True}}, "[moe_plus]", '"moe-plus" in methods'),
        ({"clustered": {"enabled": True, "models": 2}}, "[clustered]", "method.ifca.models"),
        ({"centralised": {"enabled": True}}, "[centralised]", "[method.centralised]"),
        ({"moe_staged": {"enabled": True}}, "[moe_staged]", '"moe-staged" in methods'),
        ({"personalise": {"moe_lr": 1e-3}}, "personalise.moe_lr", "method.moe.lr"),
        ({"personalise": {"pool": "log-linear"}}, "personalise.pool", "method.moe.pool"),
        (
            {"personalise": {"train_specialist": False}},
            "personalise.train_specialist",
            "method.moe.train_specialist",
        ),
        ({"personalise": {"gate_bias": 2.0}}, "personalise.gate_bias", "method.moe.gate_bias"),
        (
            {"personalise": {"moe_schedule": "staged"}},
            "personalise.moe_schedule",
            "method.moe.schedule",
        ),
    ],
)
def test_format_one_keys_say_what_to_write_instead(
    data: dict[str, Any], what: str, instead: str
) -> None:
    message = _one_line_error(data, "is from an older fedmoe config")
    assert message.startswith(what) and instead in message


def test_methods_must_be_known_and_come_after_what_they_need() -> None:
    message = _one_line_error({"methods": ["fedavg", "nope"]}, "unknown method 'nope'")
    assert all(name in message for name in ("fedavg", "moe-plus", "centralised"))
    _one_line_error(
        {"methods": ["finetune", "fedavg"]},
        "method 'finetune' needs 'fedavg': list it before 'finetune' in methods",
    )
    _one_line_error(
        {"methods": ["moe", "fedavg"]},
        "method 'moe' needs 'fedavg', 'finetune': list them before 'moe' in methods",
    )
    _one_line_error({"methods": ["fedavg", "finetune", "moe-ifca"]}, "needs 'ifca'")


def test_method_sections_belong_to_listed_methods() -> None:
    _one_line_error(
        {"methods": ["fedavg", "local"], "method": {"moe": {"lr": 1e-3}}},
        r"\[method.moe\] configures a method that is not in methods; add 'moe'",
    )
    _one_line_error({"method": {"nope": {"lr": 1.0}}}, "unknown method 'nope'")
    _one_line_error({"method": {"local": {"lr": 1.0}}}, "method 'local' has no options")


def test_listed_methods_get_their_options_with_defaults() -> None:
    cfg = config.from_dict({})
    assert cfg.methods == DEFAULT_METHODS == ("fedavg", "local", "finetune", "moe")
    assert cfg.options("moe") == MoeOptions() and cfg.options("local") is None
    assert cfg.options("moe-plus") is None  # not listed
    cfg = config.from_dict({"methods": EXTRA, "method": {"ifca": {"models": 4}}})
    assert cfg.options("ifca").models == 4
    assert cfg.options("moe-plus").ablation is False
    assert cfg.options("moe-staged").lr == MoeOptions().lr
    sections = {"moe", "moe-staged", "moe-plus", "ifca", "moe-ifca"}
    assert set(config.to_dict(cfg)["method"]) == sections


def test_ints_are_accepted_for_floats_and_defaults_fill_in() -> None:
    cfg = config.from_dict(
        {"partition": {"p": 1}, "federated": {"lr": 1}, "method": {"moe": {"lr": 1}}}
    )
    assert cfg.partition.p == 1.0 and isinstance(cfg.partition.p, float)
    assert cfg.federated.lr == 1.0 and isinstance(cfg.federated.lr, float)
    assert isinstance(cfg.options("moe").lr, float)
    assert cfg.partition.clients == 100


def test_overrides_parse_toml_literals_and_reject_bad_syntax() -> None:
    data = config.apply_overrides(
        {"partition": {"p": 0.5}},
        [
            "partition.p=0.9",
            "partition.overlap=false",
            "dataset=mnist",
            "federated.stopping.patience=3",
            "method.moe.lr=1e-3",
            "method.moe.pool=log-linear",
        ],
    )
    cfg = config.from_dict(data)
    assert cfg.partition.p == 0.9 and cfg.partition.overlap is False
    assert cfg.dataset == "mnist" and cfg.federated.stopping.patience == 3
    assert cfg.options("moe") == MoeOptions(lr=1e-3, pool="log-linear")
    with pytest.raises(ConfigError, match="key=value"):
        config.apply_overrides({}, ["partition.p"])
    with pytest.raises(ConfigError, match="not a section"):
        config.apply_overrides({"seed": 1}, ["seed.x=2"])


@pytest.mark.parametrize(
    ("override", "methods"),
    [
        ("methods=fedavg,local", ("fedavg", "local")),
        ("methods=fedavg, local ,finetune", ("fedavg", "local", "finetune")),
        ("methods=ifca", ("ifca",)),
        ('methods=["fedavg", "centralised"]', ("fedavg", "centralised")),
    ],
)
def test_set_methods_takes_a_comma_separated_string(
    override: str, methods: tuple[str, ...]
) -> None:
    cfg = config.from_dict(config.apply_overrides({}, [override]))
    assert cfg.methods == methods
    assert {name for name, _ in cfg.method} <= set(methods)


def test_set_methods_on_a_preset_keeps_the_methods_its_sections_configure() -> None:
    quick = preset("quick")
    cfg = config.from_dict(config.apply_overrides(quick, ["methods=fedavg,finetune,moe"]))
    assert cfg.methods == ("fedavg", "finetune", "moe") and cfg.options("moe").gate_bias == 2.0
    # A config that configures moe without listing it is refused ...
    data = config.apply_overrides(quick, ["methods=fedavg,local"])
    _one_line_error(data, r"\[method.moe\] configures a method that is not in methods")
    # ... but a preset's sections for methods the user leaves out are dropped,
    cfg = config.from_dict(compose("quick", {}, ["methods=fedavg,local"]))
    assert cfg.methods == ("fedavg", "local") and cfg.method == ()
    # while the user's own ones are kept, and checked.
    data = compose("quick", {"method": {"moe": {"lr": 0.1}}}, ["methods=fedavg,local"])
    _one_line_error(data, r"\[method.moe\] configures a method that is not in methods")


def test_set_methods_keeps_the_need_order_check() -> None:
    data = config.apply_overrides({}, ["methods=finetune,fedavg"])
    _one_line_error(data, "method 'finetune' needs 'fedavg'")


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
def test_presets_are_valid_and_round_trip(name: str) -> None:
    cfg = config.from_dict(preset(name))
    assert cfg.dataset == "fashion-mnist"
    text = config.dumps_toml(config.to_dict(cfg))
    assert "[method.moe]" in text
    assert config.from_dict(tomllib.loads(text)) == cfg
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("nope")


def test_paper_preset_has_the_reference_sizes() -> None:
    cfg = config.from_dict(preset("paper"))
    p, f, q = cfg.partition, cfg.federated, cfg.personalise
    assert cfg.methods == ("fedavg", "local", "finetune", "moe")
    assert (p.clients, p.train, p.val, p.test) == (100, 100, 200, 200)
    assert (f.clients_per_round, f.local_epochs, f.batch_size, f.lr) == (5, 3, 10, 5e-5)
    assert (q.lr, q.stopping.check_every, q.stopping.patience, q.stopping.min_delta) == (
        5e-5,
        5,
        10,
        0.01,
    )
    assert cfg.options("moe").lr == 1e-5


def test_paper_plus_preset_lists_every_method_in_need_order() -> None:
    cfg = config.from_dict(preset("paper-plus"))
    assert cfg.methods == (*EXTRA, "centralised")
    assert cfg.options("moe-plus").ablation is True and cfg.options("ifca").models == 3


# --------------------------------------------------------------------------------------
# plugins: user modules that register methods
# --------------------------------------------------------------------------------------

PLUGIN = """
from dataclasses import dataclass

from fedmoe.methods import Method, register


@dataclass(frozen=True)
class ScaledOptions:
    scale: float = 1.0


@register
class Scaled(Method):
    name = "test-scaled"
    label = "Scaled"
    description = "a plugin's method"
    options = ScaledOptions
    needs = ("fedavg",)
"""


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on ``sys.path`` for plugin modules; they and their methods are
    forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("fedmoe_test_plugin"):
            del sys.modules[name]
    registry.unregister("test-scaled")


def test_plugins_register_methods_that_configs_can_list(plugin_dir: Path) -> None:
    (plugin_dir / "fedmoe_test_plugin.py").write_text(PLUGIN)
    data = {
        "plugins": ["fedmoe_test_plugin"],
        "methods": ["fedavg", "test-scaled"],
        "method": {"test-scaled": {"scale": 2}},
    }
    cfg = config.from_dict(data)
    assert cfg.methods == ("fedavg", "test-scaled") and cfg.options("test-scaled").scale == 2.0
    text = config.dumps_toml(config.to_dict(cfg))
    assert config.from_dict(tomllib.loads(text)) == cfg
    _one_line_error({**data, "method": {"test-scaled": {"size": 2}}}, "method.test-scaled.size")
    # --set plugins=a,b is a comma string too.
    cfg = config.from_dict(
        config.apply_overrides({}, ["plugins=fedmoe_test_plugin", "methods=fedavg,test-scaled"])
    )
    assert cfg.plugins == ("fedmoe_test_plugin",)


@pytest.mark.parametrize(
    ("module", "source", "message"),
    [
        ("fedmoe_test_plugin_missing", None, "No module named 'fedmoe_test_plugin_missing'"),
        ("fedmoe_test_plugin_syntax", "def f(:\n", "invalid syntax"),
        ("fedmoe_test_plugin_raises", "raise RuntimeError('boom')\n", "boom"),
        ("fedmoe_test_plugin_dep", "import fedmoe_test_no_such_dependency\n", "No module named"),
        (
            "fedmoe_test_plugin_taken",
            "from fedmoe.methods import register\nfrom fedmoe.methods.moe import Moe\n"
            "@register\nclass Other(Moe):\n    pass\n",
            "method 'moe' is already registered",
        ),
        pytest.param(
            "fedmoe_test_plugin_lines",
            "raise RuntimeError('first line\\nsecond line')\n",
            "first line",
        ),
    ],
)
def test_plugin_import_errors_are_one_line(
    plugin_dir: Path, module: str, source: str | None, message: str
) -> None:
    if source is not None:
        (plugin_dir / f"{module}.py").write_text(source)
    text = _one_line_error({"plugins": [module]}, f"plugins: cannot import '{module}'")
    assert message in text
