"""Contender: fedmoe's engine with its cohort split over one-thread worker processes
(``fedmoe run --workers N``), as many workers as the job has threads: the same cores
as every other contender. W1 and W2 (independent clients) only: federated rounds stay
in one process."""

from __future__ import annotations

from bench.contenders import fedmoe_engine
from bench.harness import Measurement, Unsupported, contender_main
from bench.workloads import Job
from fedmoe.engine import parallel


def run(job: Job) -> Measurement:
    if job.workload == "W3" or job.threads < 2:
        raise Unsupported("a round's cohort stays in one process; workers need 2+ threads")
    with parallel.workers(job.threads) as pool, parallel.using(pool):
        m = fedmoe_engine.run(job)  # its untimed warm-up step also starts the workers
    m.notes.append(f"{job.threads} worker processes x 1 torch thread")
    return m


if __name__ == "__main__":
    contender_main("fedmoe-workers", run)
