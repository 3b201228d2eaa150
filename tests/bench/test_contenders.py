"""The benchmark's fedmoe contenders run (tiny sizes): a refactor of the method interface
once broke all three unnoticed until a full `python bench/run.py` printed errors."""

from __future__ import annotations

import pytest
from bench.runner import run_child


@pytest.mark.parametrize("contender", ["fedmoe_engine", "fedmoe_workers", "fedmoe_bf16"])
@pytest.mark.parametrize("workload", ["W1", "W2"])
def test_a_fedmoe_contender_trains_every_sample_it_is_given(contender: str, workload: str) -> None:
    args = ["--clients=4", "--participants=4", "--samples-per-client=10", "--batch-size=5"]
    threads = 2 if contender == "fedmoe_workers" else 1  # workers: one per thread
    cmd = ["-m", f"bench.contenders.{contender}", f"--workload={workload}", *args]
    child = run_child([*cmd, "--epochs=1", f"--threads={threads}", "--seed=0"], threads, 300)
    assert child.record is not None and not child.timed_out, child.output_tail
    result = child.record
    assert "error" not in result, result
    if "skipped" in result:  # bf16 where the CPU has no native bfloat16
        assert contender == "fedmoe_bf16", result
        return
    assert result["samples"] == 4 * 10 and result["seconds"] > 0
