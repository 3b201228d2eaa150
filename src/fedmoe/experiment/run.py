"""The embedded simulator's one driver: run the configured methods in order, each
through its hooks (:mod:`fedmoe.methods.base`), checkpoint every stage, evaluate every
method on each client's local test set, on the global test set and on each client's
validation set (what tuning grids choose on), and return self-describing results
(docs/results-format.md).

config -> dataset arrays -> partition -> tensors on the device (once) -> for each
method: its federated phase (if any) over the opt-in clients, then its
personalisation of every client (opt-out included) -> evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fedmoe
from fedmoe.engine import parallel, precision
from fedmoe.experiment.checkpoint import Checkpoints
from fedmoe.experiment.config import ExperimentConfig, to_dict
from fedmoe.experiment.entries import SPLITS, Scores, method_entry
from fedmoe.experiment.federate import federate
from fedmoe.experiment.prepare import (
    Prepared,
    mixed_precision,
    prepare,
    resolve_device,
    run_spec,
)
from fedmoe.experiment.provenance import versions
from fedmoe.federation import Clients, FederationServer, RoundRecord
from fedmoe.methods import registry
from fedmoe.methods.base import Method, Output, ProgressFactory, RunSpec, federated_output
from fedmoe.summary import majority_mask

TIMING = "timing"


class _Timer:
    """Seconds per phase, kept in the checkpoints (stage ``timing``) with every stage
    saved, so that a resumed run's ``timing_s`` counts the processes before it too, up to
    their last checkpoint (what a killed process did after it is redone and counted once).
    """

    def __init__(self, store: Checkpoints) -> None:
        self.store = store
        self.seconds: dict[str, float] = dict(store.load(TIMING) or {})
        self._running: tuple[str, float] | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._running = (name, time.perf_counter())
        yield
        self.seconds = self.so_far()
        self._running = None

    def so_far(self) -> dict[str, float]:
        """The seconds of every phase, the running one's so far included."""
        seconds = dict(self.seconds)
        if self._running is not None:
            name, start = self._running
            seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - start, 3)
        return seconds

    def checkpoint(self, stage: str, state: Any) -> None:
        """Save ``state`` as ``stage`` and the seconds so far with it."""
        self.store.save(stage, state)
        self.store.save(TIMING, self.so_far())


def _federated(
    run: RunSpec,
    method: Method,
    options: Any,
    clients: Clients,
    timer: _Timer,
    every: int,
    on_round: Callable[[RoundRecord], None] | None,
) -> Output:
    """The method's federated phase, resumed from and checkpointed into ``timer.store``."""
    assert method.federated is not None
    store, name = timer.store, f"{method.name}.federated"
    done = store.load(name)
    if done is not None:
        return Output.from_dict(done)

    def checkpoint(server: FederationServer, progress: dict[str, Any]) -> None:
        if on_round is not None:
            on_round(server.history[-1])
        if server.finished or server.next_round % every == 0:
            timer.checkpoint(f"{name}-progress", progress)

    server, state = federate(
        run,
        method.federated,
        options,
        clients,
        f"{method.label} rounds",
        store.load(f"{name}-progress"),
        checkpoint,
    )
    output = federated_output(server.best_params, server.summary(), state)
    timer.checkpoint(name, output.to_dict())
    return output


def run_experiment(
    cfg: ExperimentConfig,
    progress: ProgressFactory | None = None,
    checkpoints: Path | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> dict[str, Any]:
    """Run every configured method and return the results as a JSON-able dict.

    With ``checkpoints`` (a directory), each federated phase is checkpointed every
    ``federated.checkpoint_every`` rounds and each stage when it ends; a later call with
    the same config and directory resumes from there and returns the same results (up
    to ``timing_s``) as an uninterrupted run. ``on_round`` sees every round's record of
    the first federated method as it happens (rounds restored from a checkpoint
    excepted)."""
    store = Checkpoints(checkpoints)
    timer = _Timer(store)
    mixed = mixed_precision(cfg, resolve_device(cfg.device))
    with timer.phase("prepare"):
        prep = prepare(cfg)
    device = prep.train.x.device
    # Clients are independent in personalisation and evaluation: the worker processes the
    # caller opened (fedmoe.engine.parallel.workers) split them there, on the CPU.
    on_cpu = device.type == "cpu"
    ds = prep.dataset
    run = run_spec(
        cfg,
        prep.net,
        prep.gate_net,
        ds.input_shape,
        ds.num_classes,
        device,
        progress,
        prep.specialist_net,
    )
    k = prep.partition.num_clients
    everyone = Clients(
        torch.arange(k), prep.train, prep.val, torch.tensor(np.asarray(prep.partition.opt_out))
    )
    with precision.mixed(mixed, device):
        outputs: dict[str, Output] = {}
        first_federated = True
        for name in cfg.methods:
            method, options = registry.get(name), cfg.options(name)
            with timer.phase(name):
                federated = None
                if method.federated is not None:
                    federated = _federated(
                        run,
                        method,
                        options,
                        everyone,
                        timer,
                        cfg.federated.checkpoint_every,
                        on_round if first_federated else None,
                    )
                    first_federated = False
                inputs = {n: outputs[n] for n in method.needs}
                saved = store.load(name)
                if saved is not None:
                    outputs[name] = Output.from_dict(saved)
                else:
                    with parallel.engaged(on_cpu):
                        outputs[name] = method.personalise(
                            run, options, everyone, inputs, federated
                        )
                    timer.checkpoint(name, outputs[name].to_dict())
        with timer.phase("evaluate"), parallel.engaged(on_cpu):
            methods = {name: _evaluate(run, cfg, name, outputs, prep) for name in cfg.methods}
    return {
        "format": 2,
        "fedmoe_version": fedmoe.__version__,
        "engine": "simulator",
        "config": to_dict(cfg),
        "dataset": {
            "name": ds.name,
            "source": ds.source,
            "num_classes": ds.num_classes,
            "model": prep.net.name,
            "model_params": prep.net.num_params(),
        },
        "partition": {
            "scheme": prep.partition.scheme,
            "params": dict(prep.partition.params),
            "opt_out": [bool(v) for v in prep.partition.opt_out],
            "majority": [list(c.majority) for c in prep.partition.clients],
        },
        "clients": list(range(k)),
        "methods": methods,
        "timing_s": timer.seconds,
        "versions": versions(),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }


def epochs_of(output: Output) -> list[int] | None:
    """The epochs a stage trained per client (``None``: nothing trained)."""
    return None if output.epochs is None else [int(e) for e in output.epochs]


def _evaluate(
    run: RunSpec, cfg: ExperimentConfig, name: str, outputs: Mapping[str, Output], prep: Prepared
) -> dict[str, Any]:
    method, options = registry.get(name), cfg.options(name)
    inputs = {n: outputs[n] for n in method.needs}
    majority = majority_mask(prep.partition, prep.dataset.num_classes, prep.train.x.device)
    scores = {}
    for split, data in zip(SPLITS, (prep.test, prep.global_test, prep.val), strict=True):
        ev = method.evaluate(run, options, outputs[name], inputs, data)
        scores[split] = Scores.of(ev, majority)
    own = outputs[name]
    return method_entry(method, options, scores, epochs_of(own), own.info)
