"""Contender: fedmoe's engine under bf16 mixed precision (``dtype = "bf16-mixed"``),
where the CPU computes bfloat16 natively; the others compute in float32."""

from __future__ import annotations

import torch

from bench.contenders import fedmoe_engine
from bench.harness import Measurement, Unsupported, contender_main
from bench.workloads import Job
from fedmoe.engine import precision


def run(job: Job) -> Measurement:
    cpu = torch.device("cpu")
    why = precision.unsupported(cpu)
    if why is not None:
        raise Unsupported(why)
    with precision.mixed(True, cpu):
        m = fedmoe_engine.run(job)
    m.notes.append("bf16 autocast (products in bfloat16)")
    return m


if __name__ == "__main__":
    contender_main("fedmoe-bf16", run)
