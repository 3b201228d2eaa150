"""Contender: fedmoe's cohort engine, all participating clients trained as one cohort.

W1: :func:`fedmoe.engine.train` of a :class:`~fedmoe.engine.Classifier` from the global
model. W2: :func:`fedmoe.methods.moe` without early stopping (20 epochs for everyone).
W3: one FedAvg round as :func:`fedmoe.methods.federate` runs it (``FedAvgServer.sample``,
``train`` on the sampled cohort, ``aggregate``) minus the per-round validation.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.harness import Measurement, contender_main
from bench.workloads import (
    LR,
    Job,
    global_params,
    load_data,
    networks,
    participants,
    specialist_params,
)
from fedmoe import rng
from fedmoe.engine import Classifier, ClientData, OptimizerConfig, TrainConfig, train
from fedmoe.methods import FedAvgConfig, FedAvgServer, MixtureConfig, moe
from fedmoe.methods.params import broadcast


def run(job: Job) -> Measurement:
    data = load_data(job)
    population = ClientData.from_indices(data.x, data.y, data.clients)
    cfg = TrainConfig(job.epochs, job.batch_size, OptimizerConfig("adam", lr=LR))
    net, gate_net = networks()
    init = global_params(net, job.seed)
    if job.workload == "W3":
        return _fedavg_round(job, population, cfg, init)
    clients = torch.as_tensor(participants(job))
    cohort = population.select(clients)
    if job.workload == "W2":
        specialists = specialist_params(net, clients.numpy(), job.seed)

        def step(d: ClientData, c: TrainConfig) -> None:
            moe(net, gate_net, init, specialists, d, d, clients, c, MixtureConfig(), job.seed)

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
    job: Job, population: ClientData, cfg: TrainConfig, init: dict[str, torch.Tensor]
) -> Measurement:
    net, _ = networks()
    fed = FedAvgConfig(rounds=1, clients_per_round=job.participants, local=cfg)
    server = FedAvgServer(init, np.arange(job.clients, dtype=np.int64), fed, job.seed)
    objective = Classifier(net)

    def round_(r: int, data: ClientData) -> None:
        clients = server.sample(r)
        idx = torch.as_tensor(clients)
        keys = rng.client_keys(job.seed, idx, f"fedavg/round/{r}")
        cohort = data.select(idx)
        result = train(objective, broadcast(server.params, len(clients)), cohort, cfg, keys)
        server.aggregate(result.params, cohort.n)

    round_(1, _one_batch(population, job.batch_size))  # warm-up: one step, other sample
    server.params = init
    start = time.perf_counter()
    round_(0, population)
    return Measurement(time.perf_counter() - start)


if __name__ == "__main__":
    contender_main("fedmoe", run)
