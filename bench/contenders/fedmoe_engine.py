"""Contender: fedmoe's cohort engine, all participating clients trained as one cohort.

W1: :func:`fedmoe.engine.train` of a :class:`~fedmoe.engine.Classifier` from the global
model. W2: the ``moe`` method's :meth:`~fedmoe.methods.base.Method.personalise` without
early stopping (20 epochs for everyone). W3: one FedAvg round as the simulator's round
loop (:func:`fedmoe.experiment.federate.federate`) runs it (``FederationServer.sample``,
FedAvg's ``client_update`` on the sampled cohort, its ``aggregate``) minus the
per-round validation.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from bench.harness import Measurement, contender_main
from bench.workloads import (
    INPUT_SHAPE,
    LR,
    NUM_CLASSES,
    Job,
    global_params,
    load_data,
    networks,
    participants,
    specialist_params,
)
from fedmoe import rng
from fedmoe.engine import Classifier, ClientData, OptimizerConfig, TrainConfig, train
from fedmoe.federation import Clients, FederationConfig, FederationServer
from fedmoe.methods import RunSpec, registry
from fedmoe.methods.base import Output, federated_output
from fedmoe.methods.moe import MoeOptions
from fedmoe.methods.params import broadcast, prefixed
from fedmoe.methods.personal import MODEL
from fedmoe.models import Network


def _run_spec(job: Job, net: Network, gate_net: Network, cfg: TrainConfig) -> RunSpec:
    """What the methods see: ``cfg`` for the federated rounds and for personalisation."""
    return RunSpec(
        seed=job.seed,
        net=net,
        gate_net=gate_net,
        specialist_net=net,
        input_shape=INPUT_SHAPE,
        num_classes=NUM_CLASSES,
        dropout=net.dropout,
        dtype=torch.float32,
        device=torch.device("cpu"),
        federation=FederationConfig(rounds=1, clients_per_round=job.participants, local=cfg),
        personalise=cfg,
    )


def _clients(ids: torch.Tensor, data: ClientData) -> Clients:
    """``ids``' clients with ``data`` (training and validation alike: nothing validates)."""
    return Clients(ids, data, data, torch.zeros(len(ids), dtype=torch.bool))


def run(job: Job) -> Measurement:
    data = load_data(job)
    population = ClientData.from_indices(data.x, data.y, data.clients)
    cfg = TrainConfig(job.epochs, job.batch_size, OptimizerConfig("adam", lr=LR))
    net, gate_net = networks()
    init = global_params(net, job.seed)
    spec = _run_spec(job, net, gate_net, cfg)
    if job.workload == "W3":
        return _fedavg_round(spec, population, init)
    clients = torch.as_tensor(participants(job))
    cohort = population.select(clients)
    if job.workload == "W2":
        moe = registry.get("moe")
        specialists = specialist_params(net, clients.numpy(), job.seed)
        inputs = {
            "fedavg": federated_output(init, {}, {}),
            "finetune": Output(prefixed(specialists, MODEL)),
        }
        options = MoeOptions(lr=LR)

        def step(d: ClientData, c: TrainConfig) -> None:
            moe.personalise(
                replace(spec, personalise=c), options, _clients(clients, d), inputs, None
            )

    else:
        keys = rng.client_keys(job.seed, clients, "bench/w1")

        def step(d: ClientData, c: TrainConfig) -> None:
            train(Classifier(net), broadcast(init, len(clients)), d, c, keys)

    step(_one_batch(cohort, job.batch_size), TrainConfig(1, job.batch_size, cfg.optimizer))
    start = time.perf_counter()
    step(cohort, cfg)
    return Measurement(time.perf_counter() - start)


def _one_batch(data: ClientData, batch_size: int) -> ClientData:
    """The same cohort cut to one batch per client: the untimed warm-up step."""
    return ClientData(
        data.x, data.y, data.index[:, :batch_size], data.n.clamp(max=batch_size), data.shared
    )


def _fedavg_round(
    spec: RunSpec, population: ClientData, init: dict[str, torch.Tensor]
) -> Measurement:
    hooks = registry.get("fedavg").federated
    assert hooks is not None
    opt_in = np.arange(population.num_clients, dtype=np.int64)
    server = FederationServer(init, opt_in, spec.federation, spec.seed)

    def round_(r: int, data: ClientData) -> None:
        sampled = torch.as_tensor(server.sample(r))
        cohort = _clients(sampled, data.select(sampled))
        update = hooks.client_update(spec, None, server.params, cohort, r, {})
        server.params = hooks.aggregate(server.params, update, cohort.train.n)

    round_(1, _one_batch(population, spec.federation.local.batch_size))  # warm-up: other sample
    server.params = init
    start = time.perf_counter()
    round_(0, population)
    return Measurement(time.perf_counter() - start)


if __name__ == "__main__":
    contender_main("fedmoe", run)
