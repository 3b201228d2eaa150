"""`fedmoe run --workers N` (local processes, or Ray actors with `--ray`): the same
results.json as one process (float32) for methods whose personalisation trains one model,
a mixture, a kept part and a personal model; a bad count is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedmoe.cli import main
from fedmoe.experiment.config import dumps_toml

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

CONFIG: dict[str, Any] = {
    "data": {"global_test_examples": 500},
    "methods": ["fedavg", "local", "finetune", "moe", "ditto", "fedrep"],
    "partition": {"clients": 7, "train": 30, "val": 20, "test": 20, "p": 0.8, "opt_out": 0.3},
    "federated": {"rounds": 3, "clients_per_round": 2, "local_epochs": 1, "lr": 1e-3},
    "personalise": {"epochs": 10, "lr": 1e-2, "stopping": {"check_every": 1, "patience": 1}},
    "method": {"moe": {"lr": 1e-3}},
}


def _run(tmp_path: Path, name: str, dtype: str, workers: int, *more: str) -> dict[str, Any]:
    cfg = tmp_path / f"{dtype}.toml"
    cfg.write_text(dumps_toml({**CONFIG, "dtype": dtype}))
    out = tmp_path / name
    args = ["run", "--config", cfg, "--out", out, "--quiet", "--threads", 1, "--workers", workers]
    args += more
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        assert exc.code in (0, None)
    results = json.loads((out / "results.json").read_text())
    return dict(results["methods"])


@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")
def test_workers_give_the_results_of_one_process(tmp_path: Path) -> None:
    # float64 and per-engine-call identity: tests/engine/test_parallel.py.
    dtype = "float32"
    one = _run(tmp_path, "one", dtype, 1)
    split = _run(tmp_path, "split", dtype, 2)
    assert list(split) == list(one)
    for name in one:
        assert split[name] == one[name], name
    # Early stopping stopped clients at different epochs, so chunks shrank unevenly.
    assert len(set(one["finetune"]["epochs"])) > 1


@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")
def test_ray_workers_give_the_results_of_one_process(tmp_path: Path, local_ray: None) -> None:
    one = _run(tmp_path, "one", "float32", 1)
    on_ray = _run(tmp_path, "ray", "float32", 2, "--ray", "local")
    assert on_ray == one


def test_a_bad_worker_count_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--preset", "quick", "--workers", "0", "--out", str(tmp_path / "x")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--workers must be at least 1" in err
    with pytest.raises(SystemExit) as exc:
        main(["run", "--preset", "quick", "--ray", "local", "--workers", "1"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ray needs at least 2 workers" in err
