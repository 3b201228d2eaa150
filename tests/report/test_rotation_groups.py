"""scripts/rotation_groups.py: each method's accuracy per rotation group of clients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from script_loader import load_script


def _main(argv: list[str]) -> int:
    return int(load_script("rotation_groups.py").main(argv))


def _results(tmp_path: Path, rotations: int) -> Path:
    # Four clients: 0 and 2 in the 0° group, 1 and 3 in the 180° group.
    split = {"per_client": [0.9, 0.5, 0.7, 0.3]}
    methods = {
        "moe-ifca": {
            "label": "MoE+ IFCA",
            "local_test": split,
            "global_test": {"per_client": [0.4, 0.6, 0.4, 0.6]},
            "gate": {s: {"all": [0.2, 0.4, 0.2, 0.4]} for s in ("local_test", "global_test")},
        },
        "ifca": {
            "label": "IFCA",
            "local_test": split,
            "global_test": split,
            "details": {"models": 3, "model_of_client": [2, 0, 2, 1]},
        },
    }
    path = tmp_path / "results.json"
    path.write_text(
        json.dumps({"config": {"partition": {"rotations": rotations}}, "methods": methods})
    )
    return path


def test_each_groups_clients_are_averaged_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _main([str(_results(tmp_path, 2))]) == 0
    rows = {line.split(" | ")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert rows["| MoE+ IFCA"] == "| MoE+ IFCA | 80.00 | 40.00 | 40.00 | 60.00 | 0.30 / 0.30 | - |"
    assert rows["| IFCA"] == "| IFCA | 80.00 | 40.00 | 80.00 | 40.00 | - | 0,0,2; 1,1,0 |"


def test_a_run_without_groups_or_an_unknown_method_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _main([str(_results(tmp_path, 1))]) == 1
    assert _main([str(_results(tmp_path, 2)), "ditto"]) == 1
    assert _main([str(tmp_path / "missing.json")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and "no groups" in err[0] and "no method ditto" in err[1]
