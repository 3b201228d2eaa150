"""scripts/publish-sweep.sh: copies a sweep's finished runs, never drops a published run
the sweep lacks, and never publishes a sweep table that lacks a finished run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "publish-sweep.sh"
FILES = ("results.json", "results.md", "rounds.csv", "config.toml")


def _sweep(
    root: Path, runs: list[str], unfinished: str | None = None, table: list[str] | None = None
) -> Path:
    (root / "runs").mkdir(parents=True)
    # Python's csv module ends each row with \r\n.
    rows = "".join(f"x,runs/{name}\r\n" for name in (runs if table is None else table))
    (root / "sweep.csv").write_bytes(("cell,run\r\n" + rows).encode())
    for name in runs:
        (root / "runs" / name / "checkpoints").mkdir(parents=True)
        for f in FILES:
            (root / "runs" / name / f).write_text(f"{name} {f}")
    if unfinished:
        (root / "runs" / unfinished).mkdir()
    return root


def _publish(src: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FEDMOE": "true"}  # `true report DEST`: no report here
    return subprocess.run(
        ["sh", str(SCRIPT), str(src), str(dest)], capture_output=True, text=True, env=env
    )


def test_publishes_finished_runs_without_checkpoints(tmp_path: Path) -> None:
    src = _sweep(tmp_path / "sweep", ["a-s0", "b-s0"], unfinished="c-s0")
    dest = tmp_path / "docs" / "sweep"
    assert _publish(src, dest).returncode == 0
    assert sorted(p.name for p in (dest / "runs").iterdir()) == ["a-s0", "b-s0"]
    assert sorted(p.name for p in (dest / "runs" / "a-s0").iterdir()) == sorted(FILES)
    assert (dest / "sweep.csv").read_bytes() == (src / "sweep.csv").read_bytes()


def test_refuses_to_drop_a_published_run_the_sweep_lacks(tmp_path: Path) -> None:
    dest = _sweep(tmp_path / "docs" / "sweep", ["a-s0", "old-s0"])
    src = _sweep(tmp_path / "sweep", ["a-s0", "b-s0"])
    done = _publish(src, dest)
    assert done.returncode == 1
    assert "has run old-s0, which" in done.stderr and "copy it back first" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert (dest / "runs" / "old-s0" / "results.json").exists()  # untouched
    assert not (dest / "runs" / "b-s0").exists()


def test_refuses_a_table_that_lacks_a_finished_run(tmp_path: Path) -> None:
    # A sweep over fewer seeds rewrote the table; the run directory has seed 1 too.
    src = _sweep(tmp_path / "sweep", ["a-s0", "a-s1"], table=["a-s0"])
    dest = _sweep(tmp_path / "docs" / "sweep", ["a-s0", "a-s1"])
    done = _publish(src, dest)
    assert done.returncode == 1
    assert "sweep.csv lacks its finished run a-s1" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "x,runs/a-s1" in (dest / "sweep.csv").read_text()  # untouched
