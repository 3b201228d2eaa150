"""Contender: a plain per-client PyTorch loop, one client after another.

W1: each client trains a deep copy of the global model. W2: each client trains a copy of
its specialist and a fresh gate on the mixture. W3: the round's participants train one
after another and their state dicts are averaged.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from bench.contenders.reference import average, train_classifier, train_mixture
from bench.harness import Measurement, contender_main
from bench.workloads import (
    Data,
    Job,
    global_params,
    load_data,
    networks,
    participants,
    row,
    specialist_params,
)


def run(job: Job) -> Measurement:
    data = load_data(job)
    net, _ = networks()
    global_model = net.module()
    global_model.load_state_dict(row(global_params(net), 0))
    if job.workload == "W2":
        return _personalise(job, data, global_model)
    return _local_training(job, data, global_model)


def _local_training(job: Job, data: Data, global_model: nn.Module) -> Measurement:
    clients = participants(job).tolist()
    x0, y0 = data.client(clients[0])
    b = job.batch_size
    train_classifier(global_model, x0[:b], y0[:b], b, 1)  # warm-up: one step
    start = time.perf_counter()
    states, weights = [], []
    for k in clients:
        x, y = data.client(k)
        states.append(train_classifier(global_model, x, y, b, job.epochs).state_dict())
        weights.append(float(len(y)))
    if job.workload == "W3":
        with torch.no_grad():
            global_model.load_state_dict(average(states, weights))
    return Measurement(time.perf_counter() - start)


def _personalise(job: Job, data: Data, global_model: nn.Module) -> Measurement:
    net, gate_net = networks()
    clients = participants(job)
    init = specialist_params(net, clients)
    specialists = []
    for i in range(len(clients)):
        specialist = net.module()
        specialist.load_state_dict(row(init, i))
        specialists.append(specialist)
    x0, y0 = data.client(int(clients[0]))
    b = job.batch_size
    train_mixture(specialists[0], gate_net.module(), global_model, x0[:b], y0[:b], b, 1)
    start = time.perf_counter()
    for specialist, k in zip(specialists, clients.tolist(), strict=True):
        x, y = data.client(k)
        train_mixture(specialist, gate_net.module(), global_model, x, y, b, job.epochs)
    return Measurement(time.perf_counter() - start)


if __name__ == "__main__":
    contender_main("torch-loop", run)
