"""Analytic FLOP counts of the workloads, and the machine's measured fp32 matmul peak.

Counts are multiply-adds x 2 of the convolutions and dense layers (activations, pooling
and the optimiser are left out); a training step is counted as 3x its forward pass
(forward, gradient w.r.t. inputs, gradient w.r.t. weights).

``python -m bench.flops --threads N`` prints the peak as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.workloads import Job, networks
from fedmoe.models import Network


def forward_flops(net: Network) -> int:
    """FLOPs of one example's forward pass through ``net``."""
    _, h, w = net.input_shape
    total = 0
    for conv in net.convs:
        h, w = h - conv.kernel + 1, w - conv.kernel + 1
        total += 2 * conv.in_ch * conv.kernel * conv.kernel * conv.out_ch * h * w
        h, w = h // 2, w // 2
    for dense in net.denses:
        total += 2 * dense.in_features * dense.out_features
    return total


def training_flops_per_sample(workload: str) -> int:
    """FLOPs per training example: W1/W3 train the CNN; W2 trains specialist and gate
    and evaluates the frozen global expert forward only."""
    net, gate = networks()
    if workload == "W2":
        return 3 * forward_flops(net) + 3 * forward_flops(gate) + forward_flops(net)
    return 3 * forward_flops(net)


def job_flops(job: Job) -> int:
    """Total FLOPs of a job's timed region."""
    return training_flops_per_sample(job.workload) * job.samples


def matmul_peak(threads: int, n: int = 2048, repeats: int = 7) -> dict[str, float]:
    """Best fp32 ``torch.mm`` rate on ``n x n`` matrices with ``threads`` threads."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return {"n": n, "seconds": best, "flops_per_s": 2.0 * n**3 / best, "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure the fp32 matmul peak.")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--n", type=int, default=2048)
    ns = parser.parse_args()
    print(json.dumps(matmul_peak(ns.threads, ns.n)), flush=True)


if __name__ == "__main__":
    main()
