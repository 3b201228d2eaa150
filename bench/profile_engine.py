"""Profile one epoch of fedmoe's engine on W1 or W2 shapes (synthetic inputs).

    python bench/profile_engine.py W1 [--threads 1]
    python bench/profile_engine.py W2 [--threads 1]

Prints torch.profiler's table of the operators by self CPU time: where the engine's
time goes (convolutions, pooling, the batched optimiser, gathers).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from fedmoe import rng
from fedmoe.engine import Classifier, ClientData, Objective, OptimizerConfig, TrainConfig, train
from fedmoe.methods.mixture import Mixture
from fedmoe.methods.params import prefixed
from fedmoe.models import Params, build_network

SHAPES = {"W1": (100, 200, 20), "W2": (100, 100, 10)}  # clients, samples each, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=sorted(SHAPES))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    k, n, batch = SHAPES[args.workload]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(k * n, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (k * n,), generator=gen)
    data = ClientData.from_indices(x, y, [np.arange(i * n, (i + 1) * n) for i in range(k)])
    net = build_network("fmnist-cnn", (1, 28, 28), 10)
    clients = torch.arange(k)
    objective: Objective
    params: Params
    if args.workload == "W1":
        objective, params = Classifier(net), net.init(0, clients, "profile")
    else:
        gate = build_network("fmnist-cnn", (1, 28, 28), 10, gate=True)
        objective = Mixture(net, gate, net.init(0, torch.tensor([0]), "global"))
        params = prefixed(net.init(0, clients, "s"), "specialist") | prefixed(
            gate.init(0, clients, "g"), "gate"
        )
    keys = rng.client_keys(0, clients, "profile")
    cfg = TrainConfig(epochs=1, batch_size=batch, optimizer=OptimizerConfig("adam", lr=1e-3))
    train(objective, params, data, cfg, keys)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train(objective, params, data, cfg, keys)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
