"""Typed experiment configuration: TOML in, validated, with one-line errors.

A configuration is a tree of frozen dataclasses. :func:`from_dict` checks every key
(unknown keys are errors that list the known ones) and every value's type, then each
section validates its ranges; :func:`apply_overrides` applies ``key=value`` strings
(``--set partition.p=0.5``), parsing values as TOML literals.
"""

from __future__ import annotations

import dataclasses
import importlib
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from fedmoe.data import userdata
from fedmoe.errors import ConfigError, DataError
from fedmoe.methods import registry
from fedmoe.methods.builtin import DEFAULT_METHODS, FORMAT_ONE_KEYS

Scheme = Literal["majority", "dirichlet", "iid", "shards", "natural"]
OptName = Literal["adam", "sgd"]
DType = Literal["float32", "float64", "bf16-mixed"]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a one-line ConfigError unless ``value`` is one of ``choices``."""
    _check(value in choices, f"{name} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class PartitionConfig:
    """How clients' data are drawn (see ``fedmoe.data.partition``).

    ``scheme = "natural"`` keeps the clients the data comes split among (a CSV's
    ``data.client`` column, or ``dataset = "clients:DIR"``); ``clients`` must then be
    the number of clients the data holds, or 0 to take them all (the Flower app needs
    the number); ``train``, ``val``, ``test``, ``p``, ``overlap``, ``alpha`` and
    ``classes_per_client`` do not apply (``data.val_fraction`` says how each client's
    examples are split).
    """

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
    #: Client groups whose images are rotated: 1 (none), 2 (0 and 180 degrees) or 4 (0,
    #: 90, 180, 270); client k is in group k mod rotations (fedmoe.experiment.rotation).
    rotations: int = 1

    def validate(self) -> None:
        if self.scheme == "natural":
            _check(
                self.clients >= 0,
                f"partition.clients must be >= 0 (0: every client of the data), got {self.clients}",
            )
        else:
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
        _check(
            self.rotations in (1, 2, 4),
            f"partition.rotations must be 1, 2 or 4, got {self.rotations}",
        )


@dataclass(frozen=True)
class DataSection:
    """How the user's own files are read (``dataset = "npz:PATH"``, ``"csv:PATH"``,
    ``"images:DIR"``, ``"agnews:DIR"`` or ``"clients:DIR"``; see
    ``fedmoe.data.userdata``) and how a natural partition splits each client's examples.

    ``label``: the CSV's label column. ``client``: the CSV's client-id column (``""``:
    none; needed for ``partition.scheme = "natural"`` on a CSV). ``test_fraction``: the
    share of examples held out as the test split where the files have none (per client
    when the data names clients). ``val_fraction``: natural partitions, the share of
    each client's training examples that validates. ``split_seed``: seeds the test
    hold-out (the dataset's own split: it does not follow the run's ``seed``; the
    validation draw does). ``vocab_size``: text, how many of the most frequent training
    tokens the vocabulary keeps (besides padding, id 0, and unknown, id 1);
    ``max_length``: tokens per text. The catalogue's datasets ignore these.
    ``global_test_examples``: evaluate on the global test set's first this many examples
    (0: all of it), for quick looks and tests; published results use all of it.
    """

    label: str = "label"
    client: str = ""
    test_fraction: float = 0.2
    val_fraction: float = 0.2
    split_seed: int = 0
    vocab_size: int = 20_000
    max_length: int = 64
    global_test_examples: int = 0

    def validate(self, dataset: str, scheme: str) -> None:
        _check(bool(self.label.strip()), "data.label must name the label column")
        _check(
            self.client.strip() != self.label.strip(),
            f"data.client and data.label both name column {self.label!r}",
        )
        for name in ("test_fraction", "val_fraction"):
            value = getattr(self, name)
            _check(0.0 < value < 1.0, f"data.{name} must be in (0, 1), got {value}")
        _check(self.split_seed >= 0, f"data.split_seed must be >= 0, got {self.split_seed}")
        _check(self.vocab_size >= 1, f"data.vocab_size must be at least 1, got {self.vocab_size}")
        _check(self.max_length >= 1, f"data.max_length must be at least 1, got {self.max_length}")
        _check(
            self.global_test_examples >= 0,
            f"data.global_test_examples must be >= 0, got {self.global_test_examples}",
        )
        kind = userdata.parse_name(dataset)
        user = None if kind is None else kind.kind
        _check(
            not self.client or user == "csv",
            f"data.client names a CSV column but dataset {dataset!r} is not a csv:PATH",
        )
        _check(
            scheme != "natural" or user == "clients" or (user == "csv" and bool(self.client)),
            f"partition.scheme = 'natural' takes the clients from the data, but dataset"
            f" {dataset!r} names none: use dataset = 'csv:PATH' with data.client set to its"
            " client-id column, or dataset = 'clients:DIR'",
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
class FederatedSection:
    """The federated phase every federating method shares."""

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
            f"federated.checkpoint_every must be at least 1, got {self.checkpoint_every}",
        )
        _check(self.rounds >= 1, f"federated.rounds must be at least 1, got {self.rounds}")
        _check(
            self.clients_per_round >= 1,
            f"federated.clients_per_round must be at least 1, got {self.clients_per_round}",
        )
        _check(
            self.local_epochs >= 1,
            f"federated.local_epochs must be at least 1, got {self.local_epochs}",
        )
        _validate_optim("federated", self.batch_size, self.lr, self.momentum, self.weight_decay)
        self.stopping.validate("federated.stopping")


@dataclass(frozen=True)
class PersonaliseSection:
    """Every personalisation stage's training settings (a method's own section may set
    its learning rate)."""

    epochs: int = 500
    batch_size: int = 10
    optimizer: OptName = "adam"
    lr: float = 5e-5
    momentum: float = 0.0
    weight_decay: float = 0.0
    stopping: StoppingConfig = field(default_factory=StoppingConfig)

    def validate(self) -> None:
        _check(self.epochs >= 1, f"personalise.epochs must be at least 1, got {self.epochs}")
        _validate_optim("personalise", self.batch_size, self.lr, self.momentum, self.weight_decay)
        self.stopping.validate("personalise.stopping")


def _validate_optim(where: str, batch: int, lr: float, momentum: float, wd: float) -> None:
    _check(batch >= 1, f"{where}.batch_size must be at least 1, got {batch}")
    _check(lr > 0, f"{where}.lr must be positive, got {lr}")
    _check(0 <= momentum < 1, f"{where}.momentum must be in [0, 1), got {momentum}")
    _check(wd >= 0, f"{where}.weight_decay must be >= 0, got {wd}")


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: data, partition, the methods to run (in order) with their
    ``[method.<name>]`` sections, the shared phases' settings, seed and device."""

    dataset: str = "fashion-mnist"
    data_dir: str = ""
    #: ``auto``, a built-in architecture, or your factory ``package.module:function``
    #: (called with the input shape and the number of outputs; returns an nn.Module).
    model: str = "auto"
    #: The specialists' model in mixtures ("": ``model``); an architecture or factory.
    specialist_model: str = ""
    #: A user model's head (its last layer by default): a submodule name, for methods
    #: that split a model into body and head.
    head: str = ""
    seed: int = 0
    device: str = "cpu"
    dtype: DType = "float32"
    dropout: float = 0.5
    max_cohort: int = 1024
    tensorboard: bool = False
    methods: tuple[str, ...] = DEFAULT_METHODS
    #: Modules imported before the methods are looked up: where your own methods
    #: register themselves (``fedmoe.methods.register``).
    plugins: tuple[str, ...] = ()
    data: DataSection = field(default_factory=DataSection)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    federated: FederatedSection = field(default_factory=FederatedSection)
    personalise: PersonaliseSection = field(default_factory=PersonaliseSection)
    #: Each listed method's options (its ``options`` dataclass) as (name, options)
    #: pairs, so the config stays hashable; :meth:`options` looks one up.
    method: tuple[tuple[str, Any], ...] = ()

    def options(self, name: str) -> Any:
        """The options of the listed method ``name`` (``None`` if it has none)."""
        return dict(self.method).get(name)

    def validate(self) -> ExperimentConfig:
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        _check(self.max_cohort >= 1, f"max_cohort must be at least 1, got {self.max_cohort}")
        _check(
            self.device == "cpu" or self.device.startswith(("cuda", "mps")),
            f"device must be cpu, cuda, cuda:N or mps, got {self.device!r}",
        )
        _check(bool(self.methods), "methods must list at least one method")
        try:
            userdata.parse_name(self.dataset)
        except DataError as exc:
            raise ConfigError(f"dataset: {exc}") from None
        self.data.validate(self.dataset, self.partition.scheme)
        self.partition.validate()
        self.federated.validate()
        self.personalise.validate()
        registry.check_order(self.methods)
        resolved = to_dict(self)
        for name in self.methods:
            options = self.options(name)
            if options is not None and hasattr(options, "validate"):
                options.validate(f"method.{name}")
            registry.get(name).validate(options, resolved)
        return self


def _reject_format_one(data: Mapping[str, Any]) -> None:
    for key, instead in FORMAT_ONE_KEYS.items():
        section, _, name = key.partition(".")
        present = section in data if not name else name in data.get(section, {})
        if present:
            what = f"[{key}]" if not name else key
            raise ConfigError(f"{what} is from an older fedmoe config: {instead}")


def import_plugins(modules: tuple[str, ...]) -> None:
    """Import each module of ``plugins`` (so its methods register), one-line errors."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a broken plugin must not be a bare traceback
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ConfigError(f"plugins: cannot import {module!r}: {reason}") from None


def _method_sections(data: Mapping[str, Any], listed: tuple[str, ...]) -> dict[str, Any]:
    """Each listed method's options from the ``method`` table (defaults where absent)."""
    given = data.get("method", {})
    if not isinstance(given, dict):
        raise ConfigError(f"method must be a table of method sections, got {given!r}")
    for name in given:
        registry.get(name)
        if name not in listed:
            raise ConfigError(
                f"[method.{name}] configures a method that is not in methods; add "
                f"{name!r} to methods or remove the section"
            )
    sections: dict[str, Any] = {}
    for name in listed:
        cls = registry.get(name).options
        if cls is None:
            if given.get(name):
                raise ConfigError(f"method {name!r} has no options, got [method.{name}]")
            continue
        sections[name] = _coerce(given.get(name, {}), cls, f"method.{name}")
    return sections


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
    if get_origin(tp) is tuple:
        if isinstance(value, str):  # "a,b,c" (--set methods=a,b and Flower's run config)
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings, got {value!r}")
        return tuple(value)
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
    _reject_format_one(data)
    plain = {k: v for k, v in data.items() if k != "method"}
    cfg: ExperimentConfig = _build(ExperimentConfig, plain)
    import_plugins(cfg.plugins)
    sections = tuple(_method_sections(data, cfg.methods).items())
    cfg = dataclasses.replace(cfg, method=sections)
    return cfg.validate()


def to_dict(cfg: Any) -> dict[str, Any]:
    """The configuration as a plain dict (for TOML and JSON; lists for tuples, the
    method sections as a table)."""
    out: dict[str, Any] = _plain(dataclasses.asdict(cfg))
    if isinstance(cfg, ExperimentConfig):
        out["method"] = {name: _plain(dataclasses.asdict(o)) for name, o in cfg.method}
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


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


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update``'s keys on top of ``base``'s, tables merged key by key."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
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
