"""The Python API: docs/python-api.md's example runs as it stands, and the API's own
errors are one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import fedmoe
from fedmoe.errors import ConfigError

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    return str(blocks[0])


def test_the_documented_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(_example(), str(DOC), "exec"), {"workdir": str(tmp_path), "__name__": "example"})
    out = capsys.readouterr().out
    assert "| MoE |" in out and "gate weight on the specialist" in out
    results = fedmoe.load_results(tmp_path / "run")
    assert list(results["methods"]) == ["fedavg", "local", "finetune", "moe"]
    assert len(results["clients"]) == 4
    assert (tmp_path / "run" / "config.toml").exists()


def test_the_api_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no results here"):
        fedmoe.load_results(tmp_path)
    with pytest.raises(ConfigError, match=r"takes a config from fedmoe\.config"):
        fedmoe.run({"seed": 0})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown method"):
        fedmoe.config(methods=["nope"])
