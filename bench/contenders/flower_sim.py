"""Contender: Flower's Simulation Engine (``run_simulation`` on Ray), one virtual
SuperNode per client, each ClientApp doing the per-client loop's training.

Flower's usual configuration: one Ray worker per CPU thread (``init_args.num_cpus`` =
threads, ``client_resources.num_cpus`` = 1), one torch thread per worker. ``seconds`` is
the timed round as the ServerApp sees it (first message sent to last reply, plus the
FedAvg aggregation in W3); ``seconds_with_startup`` runs from the ``run_simulation`` call
to the end of that round: Ray's start, the workers' start and the warm-up round included.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from flwr.simulation import run_simulation

from bench.contenders import flower_app
from bench.harness import Measurement, contender_main
from bench.workloads import Job, load_data


def run(job: Job) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="fedmoe-bench-flower-") as tmp:
        directory = Path(tmp)
        flower_app.write_data(load_data(job), directory)
        flower_app.configure(job, directory)
        start = time.perf_counter()
        run_simulation(
            server_app=flower_app.server_app,
            client_app=flower_app.client_app,
            num_supernodes=job.clients,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": job.threads, "include_dashboard": False},
            },
        )
    t = flower_app.TIMINGS
    if "round_end" not in t:
        raise RuntimeError("the Flower simulation ended before its timed round finished")
    return Measurement(
        seconds=t["round_end"] - t["round_start"],
        seconds_with_startup=t["round_end"] - start,
        notes=[f"{job.threads} Ray worker{'s' if job.threads > 1 else ''} x 1 torch thread"],
    )


if __name__ == "__main__":
    contender_main("flower", run)
