"""The Python API: what the command line does, from Python.

    import fedmoe

    cfg = fedmoe.config(preset="quick", overrides=["partition.p=0.5"], model=make_net)
    results = fedmoe.run(cfg, out="runs/p05")
    print(fedmoe.table(results))

A model is a factory ``make_net(input_shape, num_outputs) -> nn.Module`` (registered for
this process under its name), a built-in architecture, or ``"package.module:function"``;
a method is a :class:`fedmoe.Method` registered with :func:`fedmoe.register`. Results
are results.json's dict (docs/results-format.md): ``results["methods"][name]`` holds each
method's accuracies, epochs and, for mixtures, gate statistics.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedmoe.errors import ConfigError
from fedmoe.experiment import config as cfgmod
from fedmoe.experiment import rundir
from fedmoe.experiment.config import ExperimentConfig
from fedmoe.experiment.presets import compose
from fedmoe.experiment.results import results_table
from fedmoe.experiment.run import run_experiment
from fedmoe.methods.base import ProgressFactory
from fedmoe.models.module import ModelFactory, register_model


def config(
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: Sequence[str] = (),
    model: str | ModelFactory | None = None,
    **values: Any,
) -> ExperimentConfig:
    """A validated config: ``preset``, then the TOML ``file``, then ``values`` (a
    config's top-level keys and tables, e.g. ``partition={"p": 0.5}``), then the
    ``key=value`` ``overrides``. ``model`` may be a factory function: it is registered
    under its qualified name and the config names it. Raises ConfigError (one line)."""
    user: dict[str, Any] = cfgmod.load(Path(file)) if file is not None else {}
    user = cfgmod.merge(user, values)
    if model is not None:
        user["model"] = model if isinstance(model, str) else _registered(model)
    return cfgmod.from_dict(compose(preset, user, list(overrides)))


def _registered(factory: ModelFactory) -> str:
    name = f"{getattr(factory, '__module__', 'user')}.{getattr(factory, '__qualname__', 'model')}"
    register_model(name, factory)
    return name


def run(
    cfg: ExperimentConfig,
    out: str | Path | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Run ``cfg``; with ``out``, in that run directory (config.toml, checkpoints,
    results.json/md, rounds.csv), as ``fedmoe run --out`` does. Returns the results."""
    if not isinstance(cfg, ExperimentConfig):
        raise ConfigError(f"run() takes a config from fedmoe.config(), got {type(cfg).__name__}")
    if out is None:
        return run_experiment(cfg, progress)
    return rundir.run_in(Path(out), cfg, progress)


def resume(directory: str | Path, progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Finish the interrupted run in ``directory`` (same results as an uninterrupted one)."""
    return rundir.resume(Path(directory), progress)


def load_results(path: str | Path) -> dict[str, Any]:
    """A run's results.json (``path``: the file or its run directory)."""
    file = Path(path)
    if file.is_dir():
        file = file / "results.json"
    try:
        results: dict[str, Any] = json.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{file}: no results here") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{file}: unreadable results: {exc}") from None
    return results


def table(results: Mapping[str, Any]) -> str:
    """The methods' accuracies as a markdown table (percent, mean ± std over clients)."""
    return results_table(dict(results))
