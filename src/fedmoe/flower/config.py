"""Flower's run config and node config, mapped onto fedmoe's typed configuration.

The run config (``[tool.flwr.app.config]`` in pyproject.toml, overridden with
``flwr run . --run-config "key=value ..."``) is fedmoe's experiment config flattened
with dots (``partition.clients``, ``federated.stopping.patience``, ``method.moe.lr``,
...; lists such as ``methods`` as comma-separated strings), plus a ``flower``
table for what only the Flower app needs (:class:`FlowerOptions`). Flower silently
ignores an override whose key is not in the defaults, so pyproject.toml lists every key.

The node config (``flower-supernode --node-config "partition-id=0 num-partitions=10"``)
says which client a SuperNode is and where its data lives (:class:`NodeOptions`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedmoe.errors import ConfigError
from fedmoe.experiment.config import ExperimentConfig, from_dict, to_dict
from fedmoe.methods import registry
from fedmoe.methods.builtin import DEFAULT_METHODS

#: A Flower user config: flat keys to scalars (``flwr.app.UserConfig``).
UserConfig = Mapping[str, bool | int | float | str]

FLOWER_SECTION = "flower"


@dataclass(frozen=True)
class FlowerOptions:
    """What the ServerApp needs beyond the experiment (run-config keys ``flower.*``).

    ``out``: directory for results.json / results.md / config.toml (a relative path is
    resolved against the ServerApp process's working directory: pass an absolute one).
    ``round_timeout``: seconds a round of any federated method (training, then
    validation) waits for replies. ``personalise_timeout``: seconds per listed method
    that the personalisation step and its evaluation each wait for every node (so the
    wait grows with the work).
    ``rejoin_timeout``: seconds the personalisation waits for a client whose node died
    to come back as a new node. ``join_timeout``: seconds to wait at the start for
    ``min_nodes`` clients (0:
    ``partition.clients``) to connect and say who they are.
    ``poll_interval``: seconds between polls for replies.
    """

    out: str = "runs/flower"
    round_timeout: float = 600.0
    personalise_timeout: float = 3600.0
    join_timeout: float = 300.0
    rejoin_timeout: float = 60.0
    min_nodes: int = 0
    poll_interval: float = 0.5

    def validate(self) -> FlowerOptions:
        timeouts = ("round_timeout", "personalise_timeout", "join_timeout", "rejoin_timeout")
        for name in (*timeouts, "poll_interval"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"flower.{_key(name)} must be positive, got {value}")
        if self.min_nodes < 0:
            raise ConfigError(f"flower.min-nodes must be >= 0, got {self.min_nodes}")
        if not self.out:
            raise ConfigError("flower.out must name a directory")
        return self


def _key(field_name: str) -> str:
    return field_name.replace("_", "-")


def _unflatten(flat: UserConfig) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"run config key {key!r}: {part!r} is not a table")
            node = child
        node[leaf] = value
    return nested


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat |= _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, list | tuple):
            flat[prefix + key] = ",".join(str(v) for v in value)  # Flower holds scalars only
        else:
            flat[prefix + key] = value
    return flat


def _typed(cls: Any, data: Mapping[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``data`` whose keys are its field names with ``-``;
    each value must have its field's default's type (an int is accepted for a float)."""
    fields = {_key(f.name): f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            raise ConfigError(
                f"unknown key {where}{key!r}; known keys here: {', '.join(sorted(fields))}"
            )
        expected = type(field.default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            raise ConfigError(f"{where}{key} must be of type {expected.__name__}, got {value!r}")
        values[field.name] = value
    return cls(**values)


def split_run_config(run_config: UserConfig) -> tuple[ExperimentConfig, FlowerOptions]:
    """The experiment and the Flower options a (flat) run config describes, validated.

    Raises ConfigError with a one-line message for an unknown key or a bad value."""
    nested = _unflatten(run_config)
    flower = nested.pop(FLOWER_SECTION, {})
    if not isinstance(flower, dict):
        raise ConfigError("run config key 'flower' must be a table")
    options = _typed(FlowerOptions, flower, "flower.").validate()
    listed = nested.get("methods", DEFAULT_METHODS)
    if isinstance(listed, str):
        listed = [m.strip() for m in listed.split(",") if m.strip()]
    sections = nested.get("method")
    if isinstance(sections, dict):
        # pyproject.toml lists every method's options (Flower drops overrides of keys it
        # does not list); only the listed methods' sections belong to the run.
        nested["method"] = {k: v for k, v in sections.items() if k in listed}
    cfg = from_dict(nested)
    for name in cfg.methods:
        why = registry.get(name).node_support(cfg.options(name))
        if why is not None:
            raise ConfigError(
                f"method {name!r} cannot run on Flower nodes: {why}; run it in the embedded "
                "simulator (fedmoe run)"
            )
    return cfg, options


def run_config(cfg: ExperimentConfig, options: FlowerOptions | None = None) -> dict[str, Any]:
    """The flat run config for ``cfg`` and ``options`` (the inverse of
    :func:`split_run_config`): what ``[tool.flwr.app.config]`` or ``--run-config`` hold."""
    flat = _flatten(to_dict(cfg))
    opts = options or FlowerOptions()
    for f in dataclasses.fields(opts):
        flat[f"{FLOWER_SECTION}.{_key(f.name)}"] = getattr(opts, f.name)
    return flat


def run_config_args(flat: Mapping[str, Any]) -> str:
    """``flat`` as one ``--run-config`` string of ``key=value`` pairs (TOML values).

    Strings are written as TOML literal strings (``'...'``, backslashes kept) or, when
    they hold a ``'``, as basic strings; Flower's parser cannot take a string holding
    both quote characters (ValueError)."""

    def value(key: str, v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if not isinstance(v, str):
            return repr(v)
        if "'" not in v:
            return f"'{v}'"
        if '"' not in v:
            return '"' + v.replace("\\", "\\\\") + '"'
        raise ValueError(f"{key}: a string holding both ' and \" cannot be passed to flwr")

    return " ".join(f"{k}={value(k, v)}" for k, v in flat.items())


@dataclass(frozen=True)
class NodeOptions:
    """One SuperNode's settings (its ``--node-config``; keys use ``-``).

    ``partition_id``: the client this node is (``0 .. num_partitions - 1``);
    ``num_partitions``: must equal the run's ``partition.clients``. ``opt_out``: the node
    declines every training and validation request and never sends parameters (it still
    personalises); in partition mode a client is also opted out when the run's
    partition says so. ``data_dir``: where to look for the dataset's standard files
    first. ``local_data``: a directory holding this node's own data in the dataset's
    standard format (train files: its train and validation data; test files: its
    local test set); empty: the node's data is client ``partition_id`` of the run's
    partition. ``dataset``, ``scheme``, ``seed``: optional; when set they must match the
    run (a node refuses to join a run it was not configured for).
    """

    partition_id: int = -1
    num_partitions: int = -1
    opt_out: bool = False
    data_dir: str = ""
    local_data: str = ""
    dataset: str = ""
    scheme: str = ""
    seed: int = -1

    def check(self, cfg: ExperimentConfig) -> NodeOptions:
        """Fail with a one-line ConfigError unless this node fits the run ``cfg``."""
        if self.num_partitions != cfg.partition.clients:
            raise ConfigError(
                f"node config num-partitions={self.num_partitions} but the run has "
                f"partition.clients={cfg.partition.clients}; start one SuperNode per client"
            )
        if not 0 <= self.partition_id < self.num_partitions:
            raise ConfigError(
                f"node config partition-id={self.partition_id} is outside "
                f"0..{self.num_partitions - 1}"
            )
        pinned = {
            "dataset": (self.dataset, cfg.dataset, ""),
            "scheme": (self.scheme, cfg.partition.scheme, ""),
            "seed": (self.seed, cfg.seed, -1),
        }
        for key, (mine, run, unset) in pinned.items():
            if mine != unset and mine != run:
                raise ConfigError(
                    f"node config {key}={mine!r} but the run has {key}={run!r}; "
                    "this node does not join it"
                )
        return self


def node_options(node_config: UserConfig) -> NodeOptions:
    """The node's options from its (flat) node config; ConfigError when malformed."""
    for required in ("partition-id", "num-partitions"):
        if required not in node_config:
            raise ConfigError(
                f"node config lacks {required}; start the SuperNode with "
                '--node-config "partition-id=<i> num-partitions=<n>"'
            )
    options: NodeOptions = _typed(NodeOptions, node_config, "node config ")
    return options
