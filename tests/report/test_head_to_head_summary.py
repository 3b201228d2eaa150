"""scripts/head-to-head-summary.py: every setting's top three and issue 20's target."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from script_loader import load_script

from .test_report import add_method, entry, make_sweep


def _summary() -> ModuleType:
    return load_script("head-to-head-summary.py")


def _rows(text: str) -> dict[str, list[str]]:
    """The table's cells by setting."""
    lines = [ln for ln in text.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    return {
        cells[0]: cells[1:] for cells in ([c.strip() for c in ln.split("|")[1:-1]] for ln in lines)
    }


def _shifted(name: str, local_shift: float, with_gate: bool) -> Any:
    """A method entry: MoE's local-test accuracies plus ``local_shift``, FedAvg's
    global-test ones; a mixture (with MoE's gate statistics) when ``with_gate``."""

    def make(results: dict[str, Any]) -> dict[str, Any]:
        moe, fedavg = results["methods"]["moe"], results["methods"]["fedavg"]
        local = [round(a + local_shift, 6) for a in moe["local_test"]["per_client"]]
        glob = list(fedavg["global_test"]["per_client"])
        gate = moe["gate"]["local_test"] if with_gate else None
        return entry(name, local, glob, gate)

    return make


def test_the_summary_ranks_pairs_and_checks_the_target_where_it_applies(tmp_path: Path) -> None:
    root = tmp_path / "h2h"
    make_sweep(root / "majority", {"p": ["0.2", "0.9"]}, [0, 1, 2])
    module = _summary()
    # make_sweep's MoE is first on local test, 10 + 1.3 x seed points ahead of FT, but
    # its global-test accuracy is far below FedAvg's.
    rows = _rows(module.table(root))
    seeds, first, second, third, against, ratio, target = rows["majority p = 0.9"]
    assert seeds == "3" and first.startswith("**MoE** ") and second.startswith("FT ")
    assert third.startswith("Local ")
    assert against == "MoE - FT: +11.30 ± 1.30 (3 of 3)"
    assert float(ratio) < 0.9 and target == "NOT met: first, MoE, below the floor"
    assert rows["majority p = 0.2"][-1] == "-"  # below p = 0.5 the target does not apply
    # A second mixture ahead of FT that keeps FedAvg's global accuracy meets it.
    add_method(root / "majority", "moe-plus", _shifted("moe-plus", -0.05, with_gate=True))
    rows = _rows(module.table(root))
    first, second = rows["majority p = 0.9"][1:3]
    assert first.startswith("**MoE** ") and second.startswith("**moe-plus** ")
    assert rows["majority p = 0.9"][-1] == "met (moe-plus)"
    # A baseline ahead of every mixture: the target is not met.
    add_method(root / "majority", "ditto", _shifted("ditto", 0.02, with_gate=False))
    rows = _rows(module.table(root))
    assert rows["majority p = 0.9"][1].startswith("ditto ")
    assert rows["majority p = 0.9"][4].startswith("MoE - ditto: -2.00")
    assert rows["majority p = 0.9"][-1] == "NOT met: no mixture first"


def test_the_target_covers_the_new_clients_cells(tmp_path: Path) -> None:
    root = tmp_path / "h2h"
    make_sweep(root / "new-clients", {"opt_out": ["0.2"]}, [0])
    make_sweep(root / "dirichlet", {"alpha": ["0.3"]}, [0])
    rows = _rows(_summary().table(root))
    assert list(rows) == ["dirichlet alpha = 0.3", "new-clients opt_out = 0.2"]
    assert rows["new-clients opt_out = 0.2"][-1].startswith("NOT met")
    assert rows["dirichlet alpha = 0.3"][-1].startswith("NOT met")


def test_the_summary_fails_in_one_line_without_a_merged_family(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _summary().main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no merged family" in err
    assert _summary().main([]) == 2
