"""Typed experiment configuration: TOML in, validated, with one-line errors.

A configuration is a tree of frozen dataclasses. :func:`from_dict` checks every key
(unknown keys are errors that list the known ones) and every value's type, then each
section validates its ranges; :func:`apply_overrides` applies ``key=value`` strings
(``--set partition.p=0.5``), parsing values as TOML literals.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from fedmoe.errors import ConfigError

Scheme = Literal["majority", "dirichlet", "iid", "shards"]
OptName = Literal["adam", "sgd"]
PoolName = Literal["probability", "log-linear"]
ScheduleName = Literal["joint", "staged"]
DType = Literal["float32", "float64"]
GateInputsName = Literal["features", "image"]
GateDataName = Literal["heldout", "train"]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a one-line ConfigError unless ``value`` is one of ``choices``."""
    _check(value in choices, f"{name} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class PartitionConfig:
    """How clients' data are drawn (see ``fedmoe.data.partition``)."""

    scheme: Scheme = "majority"
    clients: int = 100
    train: int = 100
    val: int = 200
    test: int = 200
    p: float = 0.8
    overlap: bool = True
    alpha: float = 0.5
    classes_per_client: int = 2
    opt_out: float = 0.0

    def validate(self) -> None:
        _check(self.clients >= 1, f"partition.clients must be at least 1, got {self.clients}")
        for name in ("train", "val", "test"):
            value = getattr(self, name)
            _check(value >= 1, f"partition.{name} must be at least 1, got {value}")
        _check(0.0 <= self.p <= 1.0, f"partition.p must be in [0, 1], got {self.p}")
        _check(self.alpha > 0, f"partition.alpha must be positive, got {self.alpha}")
        _check(
            self.classes_per_client >= 1,
            f"partition.classes_per_client must be at least 1, got {self.classes_per_client}",
        )
        _check(
            0.0 <= self.opt_out < 1.0, f"partition.opt_out must be in [0, 1), got {self.opt_out}"
        )


@dataclass(frozen=True)
class StoppingConfig:
    """Validation-based early stopping: check every ``check_every`` epochs (rounds for
    FedAvg), stop after ``patience`` checks without an improvement of ``min_delta``."""

    check_every: int = 5
    patience: int = 10
    min_delta: float = 0.01

    def validate(self, where: str) -> None:
        _check(
            self.check_every >= 1, f"{where}.check_every must be at least 1, got {self.check_every}"
        )
        _check(self.patience >= 1, f"{where}.patience must be at least 1, got {self.patience}")
        _check(self.min_delta >= 0, f"{where}.min_delta must be >= 0, got {self.min_delta}")


@dataclass(frozen=True)
class FedAvgSection:
    """The federated phase."""

    rounds: int = 300
    clients_per_round: int = 5
    local_epochs: int = 3
    batch_size: int = 10
    optimizer: OptName = "adam"
    lr: float = 5e-5
    momentum: float = 0.0
    weight_decay: float = 0.0
    early_stopping: bool = True
    checkpoint_every: int = 10
    stopping: StoppingConfig = field(default_factory=StoppingConfig)

    def validate(self) -> None:
        _check(
            self.checkpoint_every >= 1,
            f"fedavg.checkpoint_every must be at least 1, got {self.checkpoint_every}",
        )
        _check(self.rounds >= 1, f"fedavg.rounds must be at least 1, got {self.rounds}")
        _check(
            self.clients_per_round >= 1,
            f"fedavg.clients_per_round must be at least 1, got {self.clients_per_round}",
        )
        _check(
            self.local_epochs >= 1,
            f"fedavg.local_epochs must be at least 1, got {self.local_epochs}",
        )
        _validate_optim("fedavg", self.batch_size, self.lr, self.momentum, self.weight_decay)
        self.stopping.validate("fedavg.stopping")


@dataclass(frozen=True)
class PersonaliseSection:
    """The personalisation phase (Local, FT and MoE for every client)."""

    epochs: int = 500
    batch_size: int = 10
    optimizer: OptName = "adam"
    lr: float = 5e-5
    moe_lr: float = 1e-5
    momentum: float = 0.0
    weight_decay: float = 0.0
    pool: PoolName = "probability"
    train_specialist: bool = True
    gate_bias: float = 0.0
    moe_schedule: ScheduleName = "joint"
    stopping: StoppingConfig = field(default_factory=StoppingConfig)

    def validate(self) -> None:
        _check(self.epochs >= 1, f"personalise.epochs must be at least 1, got {self.epochs}")
        _validate_optim("personalise", self.batch_size, self.lr, self.momentum, self.weight_decay)
        _check(self.moe_lr > 0, f"personalise.moe_lr must be positive, got {self.moe_lr}")
        self.stopping.validate("personalise.stopping")


@dataclass(frozen=True)
class MoePlusSection:
    """``moe-plus`` (fedmoe.methods.gating): a gate fitted over the frozen fine-tuned
    specialist and global expert. ``ablation`` also fits every one-option-switched
    variant and reports them under ``ablation`` in results.json."""

    enabled: bool = False
    inputs: GateInputsName = "features"
    data: GateDataName = "heldout"
    calibrate: bool = True
    prior: bool = True
    adjust: bool = True
    lr: float = 1e-3
    ablation: bool = False

    def validate(self) -> None:
        _check(self.lr > 0, f"moe_plus.lr must be positive, got {self.lr}")


@dataclass(frozen=True)
class CentralisedSection:
    """A centralised-training upper bound: one model trained on every client's training
    data pooled, early-stopped on the pooled validation sets (every epoch)."""

    enabled: bool = False
    epochs: int = 100
    batch_size: int = 50
    lr: float = 1e-3
    patience: int = 5

    def validate(self) -> None:
        _check(self.epochs >= 1, f"centralised.epochs must be at least 1, got {self.epochs}")
        _check(
            self.batch_size >= 1,
            f"centralised.batch_size must be at least 1, got {self.batch_size}",
        )
        _check(self.lr > 0, f"centralised.lr must be positive, got {self.lr}")
        _check(self.patience >= 1, f"centralised.patience must be at least 1, got {self.patience}")


@dataclass(frozen=True)
class MoeStagedSection:
    """The paper's MoE trained with the staged schedule too (the gate alone with both
    experts frozen, then specialist and gate jointly), reported as method
    ``moe-staged`` beside the joint ``moe``."""

    enabled: bool = False


@dataclass(frozen=True)
class ClusteredSection:
    """IFCA-style clustered global models (``fedmoe.methods.fedavg``): ``models`` global
    models federated with the ``fedavg`` section's settings, each round's clients
    training the one that fits their data best. Adds the methods ``ifca`` (each client's
    best cluster model on its validation data) and ``moe-ifca`` (the ``moe-plus`` gate,
    with the ``moe_plus`` section's options, over the client's specialist, the global
    model and the cluster models)."""

    enabled: bool = False
    models: int = 3

    def validate(self) -> None:
        _check(self.models >= 2, f"clustered.models must be at least 2, got {self.models}")


def _validate_optim(where: str, batch: int, lr: float, momentum: float, wd: float) -> None:
    _check(batch >= 1, f"{where}.batch_size must be at least 1, got {batch}")
    _check(lr > 0, f"{where}.lr must be positive, got {lr}")
    _check(0 <= momentum < 1, f"{where}.momentum must be in [0, 1), got {momentum}")
    _check(wd >= 0, f"{where}.weight_decay must be >= 0, got {wd}")


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: data, partition, both phases, seed and device."""

    dataset: str = "fashion-mnist"
    data_dir: str = ""
    model: str = "auto"
    seed: int = 0
    device: str = "cpu"
    dtype: DType = "float32"
    dropout: float = 0.5
    max_cohort: int = 1024
    tensorboard: bool = False
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    fedavg: FedAvgSection = field(default_factory=FedAvgSection)
    personalise: PersonaliseSection = field(default_factory=PersonaliseSection)
    moe_plus: MoePlusSection = field(default_factory=MoePlusSection)
    centralised: CentralisedSection = field(default_factory=CentralisedSection)
    clustered: ClusteredSection = field(default_factory=ClusteredSection)
    moe_staged: MoeStagedSection = field(default_factory=MoeStagedSection)

    def validate(self) -> ExperimentConfig:
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        _check(self.max_cohort >= 1, f"max_cohort must be at least 1, got {self.max_cohort}")
        _check(
            self.device == "cpu" or self.device.startswith(("cuda", "mps")),
            f"device must be cpu, cuda, cuda:N or mps, got {self.device!r}",
        )
        self.partition.validate()
        self.fedavg.validate()
        self.personalise.validate()
        self.moe_plus.validate()
        self.centralised.validate()
        self.clustered.validate()
        _check(
            not self.moe_staged.enabled or self.personalise.moe_schedule == "joint",
            "moe_staged.enabled compares the staged schedule with the joint one and needs "
            "personalise.moe_schedule = 'joint'",
        )
        gated = self.moe_plus.enabled or self.clustered.enabled
        _check(
            not gated or self.moe_plus.data == "train" or self.partition.val >= 2,
            "moe_plus.data = 'heldout' splits each client's validation set in two (gate fit, "
            f"early stopping) and needs partition.val >= 2, got {self.partition.val}",
        )
        return self


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        return _build(tp, value, key + ".")
    if get_origin(tp) is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key} must be one of {_type_name(tp)}, got {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{key} must be of type {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: Any, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown key {prefix + key!r}; known keys here: {', '.join(names)}")
    values = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**values)


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """A validated configuration from a (TOML-shaped) dict; missing keys take defaults."""
    cfg: ExperimentConfig = _build(ExperimentConfig, data)
    return cfg.validate()


def to_dict(cfg: Any) -> dict[str, Any]:
    """The configuration as a plain dict (for TOML and JSON)."""
    return dataclasses.asdict(cfg)


def load(path: Path) -> dict[str, Any]:
    """Read a TOML file into a dict, with one-line errors."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as TOML, else as strings)."""
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. partition.p=0.5")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def dumps_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Write a config dict (scalars and nested tables) as TOML."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for key, value in data.items():
        if isinstance(value, dict):
            name = f"{prefix}{key}"
            lines.append(f"\n[{name}]\n" + dumps_toml(value, name + ".").rstrip("\n"))
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
