"""Profile one whole `fedmoe run`: its phases (results.json `timing_s`) and its hottest
kernels (torch.profiler's operators by self CPU time), in this process.

    python bench/profile_run.py [--preset quick] [--set key=value ...] [--threads 2]
        [--workers 1] [--rows 15]

The kernel table covers the whole run (federated rounds, personalisation, evaluation);
with ``--workers`` above 1 the workers' kernels run in other processes and are not in
it. A `paper` run records tens of millions of operator calls: profile `quick` (the same
network, batch sizes and phases, fewer clients and rounds) unless the machine has
memory to spare.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from fedmoe.engine import parallel
from fedmoe.experiment import config
from fedmoe.experiment.presets import compose
from fedmoe.experiment.run import run_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = config.from_dict(compose(args.preset, {}, args.sets))
    start = time.perf_counter()
    with parallel.workers(args.workers), profile(activities=[ProfilerActivity.CPU]) as prof:
        results = run_experiment(cfg)
    wall = time.perf_counter() - start
    phases = results["timing_s"]
    print(f"preset `{args.preset}`, {args.threads} thread(s), {args.workers} worker(s): "
          f"{wall:.1f} s under the profiler\n")  # fmt: skip
    print("| phase | s | share |\n|---|---:|---:|")
    total = sum(phases.values())
    for name, seconds in phases.items():
        print(f"| {name} | {seconds:.1f} | {seconds / total:.0%} |")
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    spent = sum(e.self_cpu_time_total for e in events) or 1
    print("\n| operator | calls | self CPU (s) | share |\n|---|---:|---:|---:|")
    for e in events[: args.rows]:
        share = e.self_cpu_time_total / spent
        print(f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1e6:.1f} | {share:.0%} |")


if __name__ == "__main__":
    main()
