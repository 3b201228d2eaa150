"""scripts/migrate-results.py: format-1 results.json and config.toml to format 2."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fedmoe.experiment import config
from fedmoe.report import write_report
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
ALL = FIXTURES / "results-all-methods.json"
QUICK = FIXTURES / "results-quick.json"

LABELS = {
    "fedavg": ("FedAvg", "FedAvg's global model, the same for every client"),
    "local": ("Local", "a model per client trained on its own data only"),
    "finetune": ("FT", "the global model fine-tuned on each client's data"),
    "moe": (
        "MoE",
        "the paper's mixture: FT's specialist and the frozen global model, gated per input",
    ),
    "moe-staged": ("MoE (staged)", "the paper's mixture trained gate first, then jointly"),
    "moe-plus": ("MoE+", "a gate fitted over the frozen FT specialist and global model"),
    "ifca": ("IFCA", "each client's best of several cluster models on validation (IFCA)"),
    "moe-ifca": (
        "MoE+ IFCA",
        "the MoE+ gate over the specialist, the global model and the cluster models",
    ),
    "centralised": (
        "Centralised",
        "one model trained on all clients' pooled data (an upper bound)",
    ),
}
GATES = {
    "moe": "gate",
    "moe-staged": "gate_staged",
    "moe-plus": "gate_plus",
    "moe-ifca": "gate_ifca",
}
BASELINES = {"local_test": ["finetune", "local"], "global_test": ["fedavg", "finetune"]}
TOP = [
    "format",
    "fedmoe_version",
    "engine",
    "config",
    "dataset",
    "partition",
    "clients",
    "methods",
    "timing_s",
    "versions",
    "threads",
    "device",
]


def _script() -> ModuleType:
    return load_script("migrate-results.py")


def _load(path: Path) -> dict[str, Any]:
    results: dict[str, Any] = json.loads(path.read_text())
    return results


def _reads_back(cfg: dict[str, Any]) -> None:
    """The config reproduces the run: fedmoe reads it with every value as given (keys
    added since take their defaults)."""
    full = config.to_dict(config.from_dict(cfg))
    assert _given(full, cfg) == cfg


def _given(full: Any, cfg: Any) -> Any:
    """``full`` restricted to the keys ``cfg`` has, at every level of its tables."""
    if not isinstance(cfg, dict) or not isinstance(full, dict):
        return full
    return {k: _given(full[k], v) for k, v in cfg.items() if k in full}


@pytest.fixture(scope="module")
def migrate() -> Any:
    return _script().migrate


def test_every_method_of_a_full_run_gets_its_entry(migrate: Any) -> None:
    old = _load(ALL)
    new = migrate(old)
    assert [k for k in new if k != "recorded_on"] == TOP
    assert new["format"] == 2 and new["engine"] == "simulator"
    assert new["clients"] == list(range(6))
    assert new["timing_s"] == old["timing_s"] and new["partition"] == old["partition"]
    assert list(new["methods"]) == list(old["methods"])
    for name, entry in new["methods"].items():
        assert (entry["label"], entry["description"]) == LABELS[name]
        assert list(entry)[:5] == ["label", "description", "local_test", "global_test", "epochs"]
        assert entry["local_test"] == old["methods"][name]["local_test"]
        assert entry["global_test"] == old["methods"][name]["global_test"]
        if name in GATES:
            assert entry["gate"] == old[GATES[name]]
            assert entry["baselines"] == BASELINES
        else:
            assert "gate" not in entry and "baselines" not in entry
        assert entry["epochs"] == old["epochs"].get(name)
    methods = new["methods"]
    assert methods["fedavg"]["epochs"] is None and methods["ifca"]["epochs"] is None
    assert methods["centralised"]["epochs"] == [3]
    assert methods["moe-staged"]["epochs"] == [8] * 6
    assert methods["fedavg"]["federation"] == old["fedavg"]
    clustered = old["clustered"]
    assert methods["ifca"]["federation"] == {
        "best_round": clustered["best_round"],
        "rounds_run": clustered["rounds_run"],
        "history": [],
    }
    assert methods["ifca"]["details"] == {
        "models": 2,
        "clients_per_model": clustered["clients_per_model"],
        "model_of_client": clustered["model_of_client"],
    }
    assert list(methods["ifca"])[5:] == ["federation", "details"]
    assert list(methods["moe-plus"])[5:] == ["gate", "baselines", "variants"]
    variants = methods["moe-plus"]["variants"]
    assert list(variants) == list(old["ablation"])
    for label, variant in variants.items():
        assert list(variant) == ["options", "local_test", "global_test", "gate", "temperature"]
        assert variant == old["ablation"][label]
    only = {"federation": {"fedavg", "ifca"}, "variants": {"moe-plus"}, "details": {"ifca"}}
    for key, names in only.items():
        assert {n for n, e in methods.items() if key in e} == names
    for gone in ("moe_pool", "gate", "gate_plus", "fedavg", "epochs", "clustered", "ablation"):
        assert gone not in new


def test_the_config_becomes_format_two(migrate: Any) -> None:
    old = _load(ALL)["config"]
    cfg = migrate(_load(ALL))["config"]
    assert cfg["methods"] == list(LABELS)
    assert list(cfg).index("methods") == list(cfg).index("tensorboard") + 1
    assert cfg["federated"] == old["fedavg"]
    assert cfg["personalise"] == {
        k: old["personalise"][k]
        for k in ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "stopping")
    }
    plus = {k: v for k, v in old["moe_plus"].items() if k != "enabled"}
    assert cfg["method"] == {
        "moe": {"lr": 0.001, "pool": "probability", "train_specialist": True, "gate_bias": 0.0,
                "schedule": "joint", "specialist": "finetune"},
        "moe-staged": {"lr": 0.001, "pool": "probability", "train_specialist": True,
                       "gate_bias": 0.0, "specialist": "finetune"},
        "moe-plus": plus,
        "ifca": {"models": 2},
        "moe-ifca": {k: v for k, v in plus.items() if k != "ablation"},
        "centralised": {k: v for k, v in old["centralised"].items() if k != "enabled"},
    }  # fmt: skip
    for gone in ("fedavg", "moe_plus", "clustered", "centralised", "moe_staged"):
        assert gone not in cfg
    _reads_back(cfg)


def test_a_paper_only_run_lists_the_paper_methods(migrate: Any) -> None:
    old = _load(QUICK)
    new = migrate(old)
    assert list(new["methods"]) == ["fedavg", "local", "finetune", "moe"]
    assert new["config"]["methods"] == ["fedavg", "local", "finetune", "moe"]
    assert list(new["config"]["method"]) == ["moe"]
    assert new["methods"]["moe"]["gate"] == old["gate"]
    assert new["methods"]["finetune"]["epochs"] == old["epochs"]["finetune"]
    assert new["clients"] == list(range(len(old["partition"]["opt_out"])))
    _reads_back(new["config"])


def test_migrating_twice_equals_migrating_once(migrate: Any) -> None:
    for path in (ALL, QUICK):
        once = migrate(_load(path))
        assert migrate(once) == once
        assert json.dumps(migrate(once)) == json.dumps(once)  # key order too
    script = _script()
    cfg = migrate(_load(ALL))["config"]
    assert script.migrate_config(cfg) == cfg


def test_a_flower_run_keeps_its_clients_and_flower_section(migrate: Any) -> None:
    old = _load(QUICK)
    old = {"engine": "flower", "clients": [0, 2, 3], **old, "flower": {"nodes": []}}
    new = migrate(old)
    assert new["engine"] == "flower" and new["clients"] == [0, 2, 3]
    assert [k for k in new if k != "recorded_on"] == [*TOP, "flower"]


def test_the_script_converts_files_in_place_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _script()
    runs = [tmp_path / "sweep" / "runs" / name for name in ("a", "b")]
    for run, fixture in zip(runs, (ALL, QUICK), strict=True):
        run.mkdir(parents=True)
        (run / "results.json").write_text(fixture.read_text())
        (run / "config.toml").write_text(config.dumps_toml(_load(fixture)["config"]))
    assert script.main([str(tmp_path / "sweep")]) == 0
    assert "converted 2 of 2" in capsys.readouterr().out
    for run, fixture in zip(runs, (ALL, QUICK), strict=True):
        assert _load(run / "results.json") == script.migrate(_load(fixture))
        toml = config.load(run / "config.toml")
        assert toml == script.migrate(_load(fixture))["config"]
    before = [(r / f).read_bytes() for r in runs for f in ("results.json", "config.toml")]
    assert script.main([str(tmp_path / "sweep"), str(runs[0] / "results.json")]) == 0
    assert "converted 0 of 3" in capsys.readouterr().out
    assert [(r / f).read_bytes() for r in runs for f in ("results.json", "config.toml")] == before
    assert script.main([str(tmp_path / "nowhere")]) == 1


def test_the_report_reads_a_migrated_run(tmp_path: Path) -> None:
    """Every method of the full fixture, migrated, is in the report's tables and plots."""
    script = _script()
    root = tmp_path / "sweep"
    run = root / "runs" / "p=0.8-s0"
    run.mkdir(parents=True)
    results = script.migrate(_load(ALL))
    (run / "results.json").write_text(json.dumps(results))
    with (root / "sweep.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["cell", "p", "seed", "method", "local_test_acc", "global_test_acc",
                         "local_test_std", "global_test_std", "run"])  # fmt: skip
        for name, m in results["methods"].items():
            local, glob = m["local_test"]["per_client"], m["global_test"]["per_client"]
            writer.writerow(["p=0.8", "0.8", 0, name, statistics.fmean(local),
                             statistics.fmean(glob), 0, 0, "runs/p=0.8-s0"])  # fmt: skip
    text = write_report(root).read_text()
    labels = [label for label, _ in LABELS.values()]
    assert "| p | seeds | " + " | ".join(labels) + " |" in text
    assert "## MoE+ variants" in text
    for label in ("MoE", "MoE (staged)", "MoE+ IFCA"):
        assert f"| {LABELS_BY_LABEL[label]} (`" in text
    for name in GATES:
        assert (root / "plots" / f"gate_{name}.png").exists()
    assert "MoE+ IFCA - FT" in text and "MoE (staged) - FedAvg" in text


LABELS_BY_LABEL = {label: f"{label}: {text}" for label, text in LABELS.values()}
