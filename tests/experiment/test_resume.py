"""Kill -9 a run at several points; ``fedmoe run --resume`` gives identical results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fedmoe.experiment import config, run
from fedmoe.experiment.checkpoint import Checkpoints

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")

#: Every built-in method (the paper-plus preset's list), each checkpointed as it ends.
METHODS = [
    "fedavg",
    "local",
    "finetune",
    "moe",
    "moe-staged",
    "moe-plus",
    "ifca",
    "moe-ifca",
    "centralised",
]
TINY: dict[str, Any] = {
    "methods": METHODS,
    "data": {"global_test_examples": 500},
    "partition": {"clients": 4, "train": 20, "val": 20, "test": 10, "p": 0.8},
    "federated": {
        "rounds": 6,
        "clients_per_round": 2,
        "local_epochs": 1,
        "lr": 1e-3,
        "checkpoint_every": 1,
    },
    "personalise": {
        "epochs": 4,
        "lr": 1e-3,
        "stopping": {"check_every": 2, "patience": 1},
    },
    "method": {
        "moe": {"lr": 1e-3},
        "moe-staged": {"lr": 1e-3},
        "moe-plus": {"ablation": True},
        "ifca": {"models": 2},
        "centralised": {"epochs": 3},
    },
}
#: The checkpoints a run writes, in order: each federated phase every few rounds
#: (``<method>.federated-progress``) and when it ends (``<method>.federated``), and each
#: method's output (``<method>``).
STAGES = [
    "fedavg.federated-progress",
    "fedavg.federated",
    "fedavg",
    "local",
    "finetune",
    "moe",
    "moe-staged",
    "moe-plus",
    "ifca.federated-progress",
    "ifca.federated",
    "ifca",
    "moe-ifca",
    "centralised",
]
#: Where the test kills the run: one of each kind of checkpoint (mid-federation, a
#: federated phase's end, a stage after a federated phase, a personalisation stage, a
#: mixture with an ablation, the second federated phase mid-way, the last stage). Every
#: stage is checkpointed by the same code in the driver; killing at all 13 took four
#: minutes of the suite (a process start each) for no other path.
KILLS = [
    "fedavg.federated-progress",
    "fedavg.federated",
    "fedavg",
    "finetune",
    "moe-plus",
    "ifca.federated-progress",
    "centralised",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _fedmoe(*args: str) -> subprocess.Popen[bytes]:
    # One thread for all: the default follows the cores free at the time (load varies).
    cmd = [sys.executable, "-m", "fedmoe", "run", "--quiet", "--threads", "1", *args]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _comparable(directory: Path) -> dict[str, Any]:
    results: dict[str, Any] = json.loads((directory / "results.json").read_text())
    results.pop("timing_s")
    return results


def _kill_when(proc: subprocess.Popen[bytes], marker: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {marker.name} appeared: {proc.stderr.read()!r}")  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{marker.name} did not appear in {timeout} s")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_kill_and_resume_gives_identical_results(tmp_path: Path) -> None:
    assert list(config.from_dict(TINY).methods) == METHODS
    cfg_file = tmp_path / "tiny.toml"
    cfg_file.write_text(config.dumps_toml(TINY))
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    reference = _fedmoe("--config", str(cfg_file), "--out", str(whole))
    assert reference.wait(timeout=300) == 0, reference.stderr.read()  # type: ignore[union-attr]
    assert not (whole / "checkpoints").exists()
    assert (whole / "rounds.csv").read_text().startswith("round,val_loss")

    checkpoints = broken / "checkpoints"
    # Mid-federation (both federated phases), after a federated phase and after
    # stages of each kind: kill -9, resume.
    assert set(KILLS) <= set(STAGES)
    proc = _fedmoe("--config", str(cfg_file), "--out", str(broken))
    _kill_when(proc, checkpoints / f"{KILLS[0]}.pt")
    for stage in KILLS[1:]:
        assert not (broken / "results.json").exists()
        _kill_when(_fedmoe("--resume", str(broken)), checkpoints / f"{stage}.pt")
    assert {p.stem for p in checkpoints.glob("*.pt")} <= {*STAGES, run.TIMING}
    final = _fedmoe("--resume", str(broken))
    assert final.wait(timeout=300) == 0, final.stderr.read()  # type: ignore[union-attr]
    assert _comparable(broken) == _comparable(whole)
    timing = json.loads((broken / "results.json").read_text())["timing_s"]
    assert set(timing) == {"prepare", *METHODS, "evaluate"}
    # A finished run cannot be resumed, nor overwritten by another config.
    again = _fedmoe("--resume", str(broken))
    assert again.wait(timeout=60) == 1
    assert b"finished already" in again.stderr.read()  # type: ignore[union-attr]


def test_a_resumed_run_counts_the_time_of_the_processes_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]
    monkeypatch.setattr(run.time, "perf_counter", lambda: now[0])
    first = run._Timer(Checkpoints(tmp_path))
    first.phase("fedavg").__enter__()
    now[0] = 3.0
    first.checkpoint("fedavg.federated-progress", {"round": 30})  # 3 s into the phase,
    now[0] = 4.0  # then a kill -9: the last second is lost (and redone).

    second = run._Timer(Checkpoints(tmp_path))
    assert second.seconds == {"fedavg": 3.0}
    assert second.store.load("fedavg.federated-progress") == {"round": 30}
    with second.phase("fedavg"):
        now[0] += 2.0
    with second.phase("evaluate"):
        now[0] += 1.0
    assert second.seconds == {"fedavg": 5.0, "evaluate": 1.0}
    # Without a checkpoint directory nothing is kept or restored.
    alone = run._Timer(Checkpoints(None))
    with alone.phase("prepare"):
        now[0] += 0.5
    alone.checkpoint("prepare", {})
    assert alone.seconds == {"prepare": 0.5}
    assert run._Timer(Checkpoints(None)).seconds == {}
