"""`fedmoe merge`: sweeps of the same grid with other methods as one leaderboard, and
the one-line errors for sweeps that cannot be merged."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fedmoe.cli import main
from fedmoe.report import write_report
from fedmoe.sweep.merge import merge
from fedmoe.sweep.reader import ReportError, read_sweep

from .test_report import expected_rows, make_sweep

GRID = {"p": ["0.5", "0.8"]}


def keep(root: Path, methods: set[str]) -> Path:
    """Drop the sweep.csv rows of every method but ``methods``."""
    with (root / "sweep.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    at = rows[0].index("method")
    with (root / "sweep.csv").open("w", newline="") as f:
        csv.writer(f).writerows([rows[0], *(r for r in rows[1:] if r[at] in methods)])
    return root


def halves(tmp_path: Path) -> tuple[Path, Path]:
    """The same two-cell, two-seed sweep twice, one with FedAvg and Local, the other with
    FT and MoE: as if each group of methods had run as a sweep of its own."""
    a = keep(make_sweep(tmp_path / "study" / "a", GRID, [0, 1]), {"fedavg", "local"})
    b = keep(make_sweep(tmp_path / "study" / "b", GRID, [0, 1]), {"finetune", "moe"})
    return a, b


def test_merged_report_is_the_whole_sweeps(tmp_path: Path) -> None:
    a, b = halves(tmp_path)
    whole = make_sweep(tmp_path / "whole", GRID, [0, 1])
    out = tmp_path / "study"
    assert merge(out, [a, b]) == out / "sweep.csv"
    merged = read_sweep(out)
    assert merged.methods == ("fedavg", "local", "finetune", "moe")
    assert {r.run for c in merged.cells for r in c.rows} == {
        f"{half}/runs/p={p}-s{s}" for half in "ab" for p in GRID["p"] for s in (0, 1)
    }
    text = write_report(out).read_text()
    for split in ("local", "global"):
        for line in expected_rows(whole, ["p"], split):
            assert line in text, line
    # MoE's paired differences against FT and Local come from different runs.
    assert "MoE - Local" in text and "MoE - FT" in text


def test_merge_finds_runs_outside_the_merged_directory(tmp_path: Path) -> None:
    a, b = halves(tmp_path)
    out = tmp_path / "elsewhere" / "merged"
    merge(out, [a, b])
    assert read_sweep(out).cells[0].rows[0].run.startswith("../../study/")


def test_the_cli_merges_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = halves(tmp_path)
    main(["merge", str(tmp_path / "study"), str(a), str(b)])
    assert "report written to" in capsys.readouterr().out
    assert (tmp_path / "study" / "report.md").exists()


def _error(out: Path, sources: list[Path]) -> str:
    with pytest.raises(ReportError) as info:
        merge(out, sources)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_method_in_two_sweeps_is_an_error(tmp_path: Path) -> None:
    a, b = halves(tmp_path)
    keep(make_sweep(tmp_path / "c", GRID, [0]), {"moe"})
    assert "method 'moe' is in both" in _error(tmp_path / "out", [a, b, tmp_path / "c"])


def test_other_clients_are_an_error(tmp_path: Path) -> None:
    a, b = halves(tmp_path)
    path = b / "runs" / "p=0.8-s1" / "results.json"
    results = json.loads(path.read_text())
    results["partition"] = {"scheme": "dirichlet", "alpha": 0.3}
    path.write_text(json.dumps(results))
    message = _error(tmp_path / "out", [a, b])
    assert "cell 'p=0.8', seed 1 ran on other data" in message


def test_other_grid_keys_are_an_error(tmp_path: Path) -> None:
    a, _ = halves(tmp_path)
    other = keep(make_sweep(tmp_path / "c", {"opt_out": ["0.2"]}, [0]), {"moe"})
    assert "grid keys ['opt_out']" in _error(tmp_path / "out", [a, other])


def test_writing_into_a_merged_sweep_is_an_error(tmp_path: Path) -> None:
    a, b = halves(tmp_path)
    assert "is one of the sweeps" in _error(a, [a, b])
    assert "given twice" in _error(tmp_path / "out", [a, a])


def test_a_missing_sweep_is_a_one_line_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = halves(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["merge", str(tmp_path / "out"), str(a), str(tmp_path / "nowhere")])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("fedmoe: error: ") and "sweep.csv" in err and err.count("\n") == 1


def test_a_header_the_report_reads_merges(tmp_path: Path) -> None:
    """Header names are read as the report reads them (spaces around names allowed)."""
    a, b = halves(tmp_path)
    text = (b / "sweep.csv").read_text()
    first, rest = text.split("\n", 1)
    (b / "sweep.csv").write_text(", ".join(first.split(",")) + "\n" + rest)
    read_sweep(b)
    merge(tmp_path / "study", [a, b])
    assert read_sweep(tmp_path / "study").methods == ("fedavg", "local", "finetune", "moe")
