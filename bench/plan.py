"""Which jobs a run does: the issue's workloads in full, or scaled down for ``--quick``.

Scaling only ever shrinks the work of every contender alike (fewer W2 epochs, smaller W3
populations), so the ratios still compare the same work; what was scaled is listed in
the output.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench.workloads import WORKLOADS, Job, standard_job

#: Contender name -> the module that runs one of its jobs (``python -m``).
CONTENDERS = {
    "fedmoe": "bench.contenders.fedmoe_engine",
    "fedmoe-workers": "bench.contenders.fedmoe_workers",
    "fedmoe-bf16": "bench.contenders.fedmoe_bf16",
    "torch-loop": "bench.contenders.torch_loop",
    "flower": "bench.contenders.flower_sim",
    "pfl": "bench.contenders.pfl_fedavg",
}
BASELINE = "fedmoe"
W3_POPULATIONS = (100, 1_000, 10_000)
QUICK_W3_POPULATIONS = (100, 1_000)
QUICK_W2_EPOCHS = 2


@dataclass(frozen=True)
class Planned:
    """One contender on one workload (``label`` tells W3's populations apart)."""

    label: str
    contender: str
    job: Job

    @property
    def module(self) -> str:
        return CONTENDERS[self.contender]


def make_plan(
    workloads: list[str], contenders: list[str], threads: int, quick: bool
) -> tuple[list[Planned], list[str]]:
    """The jobs to run, in order (workload by workload, fedmoe first), and a line per
    way the run was scaled down from the issue's workloads."""
    unknown = sorted(set(workloads) - set(WORKLOADS)) + sorted(set(contenders) - set(CONTENDERS))
    if unknown:
        raise ValueError(f"unknown workload or contender: {', '.join(unknown)}")
    order = [c for c in CONTENDERS if c in contenders]
    plan: list[Planned] = []
    scaled: list[str] = []
    for workload in (w for w in WORKLOADS if w in workloads):
        for label, job in _jobs(workload, threads, quick, scaled):
            plan.extend(Planned(label, c, job) for c in order)
    return plan, scaled


def _jobs(workload: str, threads: int, quick: bool, scaled: list[str]) -> list[tuple[str, Job]]:
    if workload == "W3":
        populations = QUICK_W3_POPULATIONS if quick else W3_POPULATIONS
        if quick:
            scaled.append(
                f"W3: populations {', '.join(f'{p:,}' for p in populations)} "
                f"(the full run adds {W3_POPULATIONS[-1]:,})"
            )
        return [(f"W3 {p:,}", standard_job("W3", threads, p)) for p in populations]
    job = standard_job(workload, threads)
    if quick and workload == "W2":
        scaled.append(f"W2: {QUICK_W2_EPOCHS} of {job.epochs} epochs")
        job = replace(job, epochs=QUICK_W2_EPOCHS)
    return [(workload, job)]
