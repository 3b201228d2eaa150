"""scripts/targets.py: the "best of both worlds" targets, checked on a sweep directory."""

from __future__ import annotations

import statistics
from pathlib import Path
from types import ModuleType

import pytest

from script_loader import load_script

from .test_report import make_sweep


def _targets() -> ModuleType:
    return load_script("targets.py")


def _rows(text: str) -> dict[str, list[str]]:
    """The table's cells by p."""
    lines = [
        line for line in text.splitlines() if line.startswith("| 0.") or line.startswith("| 1")
    ]
    return {
        cells[0]: cells[1:] for cells in ([c.strip() for c in ln.split("|")[1:-1]] for ln in lines)
    }


def test_targets_table_has_the_means_per_seed_differences_and_verdicts(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.2", "0.9"]}, [0, 1, 2])
    rows = _rows(_targets().table(root, "moe"))
    # make_sweep's MoE is ahead of FT by 10 + 1.3 x seed points on local test.
    seeds, local, ft, _loc, diff, per_seed, plus_one, best = rows["0.9"][:8]
    assert seeds == "3" and per_seed == "+10.00, +11.30, +12.60"
    assert diff == "+11.30" and plus_one == "met" and best == "met"
    assert float(local) - float(ft) == pytest.approx(11.30, abs=0.006)
    glob, fedavg, ratio, reach = rows["0.9"][8:]
    assert float(ratio) == pytest.approx(float(glob) / float(fedavg), abs=6e-4)
    assert reach == ("met" if float(ratio) >= 0.9 else "NOT met")
    # Outside p = 0.5..0.9 only the max(FT, Local) target applies.
    assert rows["0.2"][6] == "-" and rows["0.2"][11] == "-"
    assert statistics.fmean([10.0, 11.3, 12.6]) == pytest.approx(float(rows["0.2"][4]))


def test_targets_fails_in_one_line_on_a_method_the_sweep_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.5"]}, [0])
    assert _targets().main([str(root), "moe-ifca"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no 'moe-ifca' rows" in err
