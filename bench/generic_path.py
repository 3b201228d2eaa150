"""W1 on the fused built-in path and on the generic ``nn.Module`` path, side by side.

The same workload as bench/workloads.py's W1 (100 clients x 200 real Fashion-MNIST
samples, batch 20, Adam, one epoch from one global model), the same network (the
paper's Fashion-MNIST CNN; on the generic path as the ``nn.Module`` a user would write,
through ``torch.func``), the same initial parameters, one after the other in one run.

    python bench/generic_path.py [--clients 100] [--repeats 3] [--threads 2]

Prints samples/s of each and their ratio (fused / generic); the best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fedmoe import rng
from fedmoe.data import MajoritySpec, Sizes, load_dataset, make_partition
from fedmoe.engine import Classifier, ClientData, OptimizerConfig, TrainConfig, train
from fedmoe.methods.params import broadcast
from fedmoe.models import Model, ModuleNetwork, build_network


def _lenet(shape: tuple[int, ...], outputs: int) -> torch.nn.Module:
    return build_network("fmnist-cnn", shape, outputs).module()


def _time(net: Model, start: dict[str, torch.Tensor], data: ClientData, repeats: int) -> float:
    cfg = TrainConfig(1, 20, OptimizerConfig("adam", lr=1e-3))
    keys = rng.client_keys(0, torch.arange(data.num_clients), "bench/W1")
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        train(Classifier(net), start, data, cfg, keys)
        best = min(best, time.perf_counter() - began)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("fashion-mnist")
    part = make_partition(
        MajoritySpec(Sizes(args.clients, 200, 1, 1), 0.8, "overlap"),
        ds.y_train,
        ds.y_test,
        ds.num_classes,
        0,
    )
    x = torch.tensor(ds.x_train, dtype=torch.float32) / 255.0
    y = torch.from_numpy(ds.y_train.astype(np.int64))
    data = ClientData.from_indices(x, y, part.split("train"))
    fused = build_network("fmnist-cnn", (1, 28, 28), 10)
    generic = ModuleNetwork("lenet-module", (1, 28, 28), 10, _lenet)
    start = broadcast(fused.init(0, torch.tensor([0]), "bench/global"), args.clients)
    samples = args.clients * 200
    rows = []
    for name, net in (("fused", fused), ("generic (torch.func)", generic)):
        seconds = _time(net, start, data, args.repeats)
        rows.append((name, samples / seconds))
    print(f"W1: {args.clients} clients x 200, batch 20, 1 epoch, {args.threads} threads")
    print("| path | samples/s |")
    print("|---|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} |")
    print(f"fused / generic: {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
