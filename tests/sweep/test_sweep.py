"""Sweeps: grid parsing, one run directory per cell and seed, skip and resume, sweep.csv.

The runs write results.json format 2 (docs/results-format.md), which the report reads.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from fedmoe.errors import ConfigError
from fedmoe.experiment import config as cfgmod
from fedmoe.experiment import rundir
from fedmoe.sweep import runner as sweep
from fedmoe.sweep.runner import parse_axis, run_sweep

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

#: A tiny config (format 2) of the default methods: the paper's four.
TINY: dict[str, Any] = {
    "data": {"global_test_examples": 500},
    "partition": {"clients": 4, "train": 20, "val": 20, "test": 10, "p": 0.8},
    "federated": {
        "rounds": 2,
        "clients_per_round": 2,
        "local_epochs": 1,
        "lr": 1e-3,
        "checkpoint_every": 1,
    },
    "personalise": {"epochs": 4, "lr": 1e-3, "stopping": {"check_every": 2, "patience": 1}},
    "method": {"moe": {"lr": 1e-3}},
}
PAPER = ("fedavg", "local", "finetune", "moe")


def _rounds(n: int) -> dict[str, Any]:
    return {**TINY, "federated": {**TINY["federated"], "rounds": n}}


def test_grid_parsing_and_ranges() -> None:
    axis = parse_axis("p=0.2,0.3,...,1.0")
    assert axis.values == tuple(f"{v / 10:.1f}" for v in range(2, 11))
    assert axis.config_key == "partition.p"
    assert parse_axis("personalise.pool=probability,log-linear").values == (
        "probability",
        "log-linear",
    )
    for bad in ("p", "p=", "p=0.2,...", "p=0.5,0.2,...,1.0", "p=0.2,0.3,...,0.45"):
        with pytest.raises(ConfigError):
            parse_axis(bad)


@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")
def test_sweep_runs_cells_skips_finished_and_writes_csv(tmp_path: Path) -> None:
    base = _rounds(2)
    axes = [parse_axis("p=0.5,1.0"), parse_axis("opt_out=0,0.5")]
    logs: list[str] = []
    path = run_sweep(base, axes, 1, tmp_path, log=logs.append)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 4 * 4
    assert {(r["p"], r["opt_out"]) for r in rows} == {
        ("0.5", "0"),
        ("0.5", "0.5"),
        ("1.0", "0"),
        ("1.0", "0.5"),
    }
    assert {r["method"] for r in rows} == set(PAPER)
    assert all(0.0 <= float(r["local_test_acc"]) <= 1.0 for r in rows)
    results = json.loads((tmp_path / rows[0]["run"] / "results.json").read_text())
    assert results["format"] == 2 and list(results["methods"]) == list(PAPER)
    assert [m["label"] for m in results["methods"].values()] == ["FedAvg", "Local", "FT", "MoE"]
    assert "gate" in results["methods"]["moe"] and "federation" in results["methods"]["fedavg"]
    # The report reads the sweep: every method by its label, the MoE's gate plotted.
    from fedmoe.report import write_report

    text = write_report(tmp_path).read_text()
    assert "| p | opt_out | seeds | FedAvg | Local | FT | MoE |" in text
    assert "| p | opt_out | MoE - FT | MoE - Local |" in text
    assert (tmp_path / "plots" / "gate_moe.png").exists()
    # Running again skips every finished run; a run without results is redone.
    (tmp_path / "runs" / "p=1.0,opt_out=0.5-s0" / "results.json").unlink()
    logs.clear()
    run_sweep(base, axes, 1, tmp_path, log=logs.append)
    assert sum("skipped" in line for line in logs) == 3
    assert len(list(csv.DictReader(path.open()))) == 16
    with pytest.raises(ConfigError, match=r"partition\.p"):
        run_sweep(base, [parse_axis("p=2")], 1, tmp_path / "bad", log=logs.append)


@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")
def test_tensorboard_option_logs_rounds_and_results(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fedmoe.experiment import config

    cfg = config.from_dict({**_rounds(3), "tensorboard": True})
    results = rundir.run_in(tmp_path / "run", cfg)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    losses = events.Scalars("federated/val_loss")
    history = results["methods"]["fedavg"]["federation"]["history"]
    checks = [r for r in history if r["val_loss"] is not None]
    assert [e.step for e in losses] == [r["round"] for r in checks]
    assert losses[0].value == pytest.approx(checks[0]["val_loss"], rel=1e-6)
    moe = events.Scalars("moe/local_test_accuracy")
    assert moe[0].value == pytest.approx(results["methods"]["moe"]["local_test"]["mean"], rel=1e-6)


def test_sweep_runs_every_cell_for_one_seed_before_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    monkeypatch.setattr(rundir, "run_claimed", lambda d, cfg, progress=None: ran.append(d.name))
    run_sweep(TINY, [parse_axis("p=0.5,1.0")], 2, tmp_path, log=lambda _: None)
    assert ran == ["p=0.5-s0", "p=1.0-s0", "p=0.5-s1", "p=1.0-s1"]


@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")
def test_workers_sharing_a_sweep_skip_the_runs_another_holds(tmp_path: Path) -> None:
    base = _rounds(2)
    axes = [parse_axis("p=0.5,1.0")]
    logs: list[str] = []
    with rundir.claim(tmp_path / "runs" / "p=1.0-s0"):
        path = run_sweep(base, axes, 1, tmp_path, log=logs.append)
    assert path is not None
    assert any("p=1.0 seed 0: another worker is running it, skipped" in x for x in logs)
    assert any("1 run(s) still running in other workers" in x for x in logs)
    assert {r["p"] for r in csv.DictReader(path.open())} == {"0.5"}
    logs.clear()
    run_sweep(base, axes, 1, tmp_path, log=logs.append)
    assert sum("skipped" in x for x in logs) == 1
    assert {r["p"] for r in csv.DictReader(path.open())} == {"0.5", "1.0"}


def test_a_worker_that_finds_every_run_held_elsewhere_ends_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedmoe.cli import main

    # The second worker of a one-run sweep: nothing to do, nothing finished to tabulate,
    # and no error (a queue of sweeps under `set -e` goes on to its next sweep).
    cfg_file = tmp_path / "tiny.toml"
    cfg_file.write_text(cfgmod.dumps_toml(TINY))
    out = tmp_path / "sweep"
    with rundir.claim(out / "runs" / "p=0.5-s0"):
        assert run_sweep(TINY, [parse_axis("p=0.5")], 1, out, log=lambda _: None) is None
        main(["sweep", "--config", str(cfg_file), "--grid", "p=0.5", "--out", str(out), "--quiet"])
    assert "no run has finished yet" in capsys.readouterr().out
    assert not (out / "sweep.csv").exists()


def _cli_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    from fedmoe.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    return err


def test_a_directory_held_by_another_process_is_refused_until_it_dies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from fedmoe.experiment.rundir import claim\n"
            "with claim(Path(sys.argv[1])):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(600)\n",
            str(run),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(rundir.Busy, match=f"pid {holder.pid}"), rundir.claim(run):
            pass
        err = _cli_error(capsys, "run", "--preset", "quick", "--quiet", "--out", str(run))
        assert f"in use by another fedmoe process (pid {holder.pid})" in err
        (run / "config.toml").write_text("")
        assert "in use by another" in _cli_error(capsys, "run", "--resume", str(run))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # A killed holder leaves its lock file behind but no lock: the directory is free.
    deadline = time.monotonic() + 10
    while True:
        try:
            with rundir.claim(run):
                break
        except rundir.Busy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")
def test_sweep_and_run_commands_set_the_threads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from fedmoe.cli import main
    from fedmoe.experiment import config

    toml = tmp_path / "tiny.toml"
    toml.write_text(config.dumps_toml(_rounds(2)))
    args = ["sweep", "--config", str(toml), "--grid", "p=0.5", "--quiet", "--out"]
    assert "--threads must be at least 1, got 0" in _cli_error(
        capsys, *args, str(tmp_path / "s"), "--threads", "0"
    )
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        main([*args, str(tmp_path / "s"), "--threads", "1"])
        results = json.loads((tmp_path / "s" / "runs" / "p=0.5-s0" / "results.json").read_text())
        assert results["threads"] == 1
        # The kernels torch chose for this CPU (their rounding differs between them).
        assert results["versions"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        run = ["run", "--config", str(toml), "--quiet", "--out", str(tmp_path / "r")]
        assert "--threads must be at least 1, got -1" in _cli_error(capsys, *run, "--threads=-1")
        torch.set_num_threads(2)
        main([*run, "--threads", "1"])
        assert json.loads((tmp_path / "r" / "results.json").read_text())["threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_a_run_another_worker_finished_meanwhile_is_not_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    looks = iter([False, True])  # not finished at the first look, finished once claimed
    monkeypatch.setattr(rundir, "is_finished", lambda d: next(looks, True))
    monkeypatch.setattr(rundir, "run_claimed", lambda d, cfg, p=None: ran.append(d.name))
    monkeypatch.setattr(sweep, "write_csv", lambda out, axes, table: out / "sweep.csv")
    logs: list[str] = []
    run_sweep(TINY, [parse_axis("p=0.5")], 1, tmp_path, log=logs.append)
    assert ran == []
    assert logs == ["[1/1] p=0.5 seed 0: finished by another worker, skipped"]
