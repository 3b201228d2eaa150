"""What a node computes: every method's hooks at K = 1 (no Flower here).

The node builds the same :class:`~fedmoe.methods.base.RunSpec` as the embedded
simulator and calls the same hooks with a cohort of one client, so client ``i`` here
follows the same random streams as client ``i`` in a simulated cohort; results differ
only by the floating-point rounding of batched versus single-client kernels.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from fedmoe.engine import Evaluation, precision
from fedmoe.experiment.config import ExperimentConfig
from fedmoe.experiment.entries import SPLITS, Scores
from fedmoe.experiment.prepare import build_networks, mixed_precision, run_spec
from fedmoe.federation import Clients, State, Update
from fedmoe.flower.node_data import NodeData
from fedmoe.methods import registry
from fedmoe.methods.base import (
    Federated,
    Method,
    Output,
    RunSpec,
    federated_output,
)
from fedmoe.models import Params


@dataclass(frozen=True)
class Node:
    """One client's view of the run: its config, data, the run's spec and itself as a
    cohort of one."""

    cfg: ExperimentConfig
    data: NodeData
    run: RunSpec
    clients: Clients
    #: bf16 mixed precision (``dtype = "bf16-mixed"``), as in the simulator.
    mixed: bool = False

    @staticmethod
    def of(cfg: ExperimentConfig, data: NodeData) -> Node:
        net, gate_net, specialist = build_networks(cfg, data.input_shape, data.num_classes)
        device = data.train.x.device
        shape, classes = data.input_shape, data.num_classes
        run = run_spec(cfg, net, gate_net, shape, classes, device, None, specialist)
        ids = torch.tensor([data.client])
        clients = Clients(ids, data.train, data.val, torch.tensor([data.opt_out]))
        return Node(cfg, data, run, clients, mixed_precision(cfg, device))

    def _precision(self) -> AbstractContextManager[None]:
        return precision.mixed(self.mixed, self.clients.device)

    def method(self, name: str) -> tuple[Method, Any]:
        """A listed method and its options; ValueError for one the run does not list."""
        if name not in self.cfg.methods:
            raise ValueError(f"method {name!r} is not one of this run's methods")
        return registry.get(name), self.cfg.options(name)

    def federated(self, name: str) -> tuple[Federated, Any]:
        """A listed method's federated hooks; ValueError if it has none."""
        method, options = self.method(name)
        if method.federated is None:
            raise ValueError(f"method {name!r} has no federated phase")
        return method.federated, options

    def server_reference(self, name: str) -> Params:
        """The shapes and dtypes the server model(s) of method ``name`` must have."""
        hooks, options = self.federated(name)
        return hooks.init(self.run, options, self.clients.device)

    def update(self, name: str, server: Params, round_: int, state: State) -> Update:
        """Method ``name``'s client update of this node in ``round_``."""
        hooks, options = self.federated(name)
        if not state:
            state = hooks.init_client_state(self.run, options, self.clients)
        with self._precision():
            return hooks.client_update(self.run, options, server, self.clients, round_, state)

    def validate(self, name: str, server: Params, state: State) -> Evaluation:
        """Method ``name``'s validation score of the server model(s) on this node, with
        its ``state`` kept across rounds (``{}``: none yet)."""
        hooks, options = self.federated(name)
        if not state:
            state = hooks.init_client_state(self.run, options, self.clients)
        with self._precision():
            return hooks.validate(self.run, options, server, self.clients, state)

    def personalise(
        self, best: Mapping[str, Params], states: Mapping[str, State]
    ) -> dict[str, Output]:
        """Every listed method's output for this node, in order: ``best`` holds each
        federated method's best server model(s), ``states`` this node's state kept
        across that method's rounds."""
        outputs: dict[str, Output] = {}
        for name in self.cfg.methods:
            method, options = self.method(name)
            federated = None
            if method.federated is not None:
                state = states.get(name) or method.federated.init_client_state(
                    self.run, options, self.clients
                )
                federated = federated_output(best[name], {}, dict(state))
            inputs = {n: outputs[n] for n in method.needs}
            with self._precision():
                outputs[name] = method.personalise(
                    self.run, options, self.clients, inputs, federated
                )
        return outputs

    def evaluate(self, outputs: Mapping[str, Output]) -> dict[str, dict[str, Scores]]:
        """Every method's scores on this node's local test set, the global test set and
        its validation set."""
        device = self.clients.device
        majority = torch.zeros(1, self.data.num_classes, dtype=torch.bool, device=device)
        majority[0, list(self.data.majority)] = True
        scores: dict[str, dict[str, Scores]] = {}
        for name in self.cfg.methods:
            method, options = self.method(name)
            inputs = {n: outputs[n] for n in method.needs}
            scores[name] = {}
            splits = (self.data.test, self.data.global_test, self.data.val)
            for split, data in zip(SPLITS, splits, strict=True):
                with self._precision():
                    ev = method.evaluate(self.run, options, outputs[name], inputs, data)
                scores[name][split] = Scores.of(ev, majority)
        return scores
