"""The benchmark's fedmoe contenders run (tiny sizes): a refactor of the method interface
once broke all three unnoticed until a full `python bench/run.py` printed errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARK = "BENCH_RESULT "


@pytest.mark.parametrize("contender", ["fedmoe_engine", "fedmoe_workers", "fedmoe_bf16"])
@pytest.mark.parametrize("workload", ["W1", "W2"])
def test_a_fedmoe_contender_trains_every_sample_it_is_given(contender: str, workload: str) -> None:
    args = ["--clients=4", "--participants=4", "--samples-per-client=10", "--batch-size=5"]
    cmd = [sys.executable, "-m", f"bench.contenders.{contender}", f"--workload={workload}"]
    threads = 2 if contender == "fedmoe_workers" else 1  # workers: one per thread
    cmd += [*args, "--epochs=1", f"--threads={threads}", "--seed=0"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    assert proc.returncode == 0 and lines, proc.stderr[-2000:]
    result = json.loads(lines[-1][len(MARK) :])
    assert "error" not in result, result
    if "skipped" in result:  # bf16 where the CPU has no native bfloat16
        assert contender == "fedmoe_bf16", result
        return
    assert result["samples"] == 4 * 10 and result["seconds"] > 0
