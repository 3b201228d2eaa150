"""scripts/merge_runs.py: runs that split one config's method list merge into the run of
the whole list; runs of different configs, or disagreeing on a shared method, do not."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from script_loader import load_script


def _script() -> ModuleType:
    return load_script("merge_runs.py")


def _run(methods: dict[str, float], seed: int = 0) -> dict[str, Any]:
    entries = {m: {"label": m, "local_test": {"mean": a}} for m, a in methods.items()}
    return {
        "config": {"seed": seed, "methods": list(methods), "method": {m: {} for m in methods}},
        "partition": {"scheme": "majority"},
        "methods": entries,
        "timing_s": {"prepare": 1.0, **{m: 10.0 for m in methods}, "evaluate": 5.0},
    }


def test_split_runs_merge_into_the_whole_list() -> None:
    merged = _script().merge(
        [_run({"fedavg": 0.8, "ditto": 0.9}), _run({"fedavg": 0.8, "apfl": 0.85})], ["a", "b"]
    )
    assert list(merged["methods"]) == ["fedavg", "ditto", "apfl"]
    assert merged["config"]["methods"] == ["fedavg", "ditto", "apfl"]
    assert set(merged["config"]["method"]) == {"fedavg", "ditto", "apfl"}
    assert merged["timing_s"]["evaluate"] == 10.0 and merged["timing_s"]["fedavg"] == 10.0
    assert merged["merged_from"] == ["a", "b"]


@pytest.mark.parametrize(
    ("second", "message"),
    [(_run({"apfl": 0.85}, seed=1), "config differs"), (_run({"fedavg": 0.7}), "entry differs")],
)
def test_runs_that_disagree_are_refused(second: dict[str, Any], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        _script().merge([_run({"fedavg": 0.8}), second], ["a", "b"])


def test_an_unfinished_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.json").write_text(json.dumps(_run({"fedavg": 0.8})))
    with pytest.raises(SystemExit, match="not a finished run"):
        _script().main(["merge_runs", str(tmp_path / "out"), str(tmp_path / "done"), str(tmp_path)])
