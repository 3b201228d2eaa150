"""Convert format-1 results (fedmoe before the methods redesign) to format 2, in place.

    python scripts/migrate-results.py docs/results

Every ``results.json`` under each PATH (a file or a directory) that is in format 1,
and the ``config.toml`` beside it, is rewritten in format 2 (docs/results-format.md,
"Format 1 to format 2"); files already in format 2 are left as they are, so running
it again changes nothing. Prints how many results.json files it converted.

:func:`migrate` and :func:`migrate_config` do the conversion on dicts.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from fedmoe.experiment.config import dumps_toml

FORMAT = 2

#: The format-1 methods: (label, description).
METHODS = {
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
#: Each format-1 mixture and the results.json key of its gate statistics.
GATES = {
    "moe": "gate",
    "moe-staged": "gate_staged",
    "moe-plus": "gate_plus",
    "moe-ifca": "gate_ifca",
}
#: What the mixtures' paired differences compare them with.
BASELINES = {"local_test": ["finetune", "local"], "global_test": ["fedavg", "finetune"]}
#: The per-client entries of IFCA's format-1 ``clustered`` section.
IFCA_DETAILS = ("models", "clients_per_model", "model_of_client")
#: The top-level results keys of format 2, in order.
TOP = (
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
    "flower",
)
#: Format-1 results keys that format 2 holds elsewhere (or not at all).
CONVERTED = (
    "moe_pool",
    "gate",
    "gate_staged",
    "gate_plus",
    "gate_ifca",
    "fedavg",
    "epochs",
    "clustered",
    "ablation",
)
#: The mixture keys of format 1's ``[personalise]``: format-2 key, and whether
#: ``moe-staged`` takes it too.
MOE_KEYS = {
    "moe_lr": ("lr", True),
    "pool": ("pool", True),
    "train_specialist": ("train_specialist", True),
    "gate_bias": ("gate_bias", True),
    "moe_schedule": ("schedule", False),
}
#: The keys of each ``variants`` entry, in order (others follow).
VARIANT_KEYS = ("options", "local_test", "global_test", "gate", "temperature")


def _copy(tree: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a JSON object."""
    copied: dict[str, Any] = json.loads(json.dumps(tree))
    return copied


def is_format_two(results: dict[str, Any]) -> bool:
    return results.get("format") == FORMAT


def is_config_two(cfg: dict[str, Any]) -> bool:
    """Whether a config dict is already format 2 (it lists its methods)."""
    return "methods" in cfg and "fedavg" not in cfg


def _enabled(cfg: dict[str, Any], section: str) -> bool:
    value = cfg.get(section)
    return isinstance(value, dict) and value.get("enabled") is True


def config_methods(cfg: dict[str, Any]) -> list[str]:
    """The methods a format-1 config runs, in the order format 2 lists them."""
    methods = ["fedavg", "local", "finetune", "moe"]
    if _enabled(cfg, "moe_staged"):
        methods.append("moe-staged")
    if _enabled(cfg, "moe_plus"):
        methods.append("moe-plus")
    if _enabled(cfg, "clustered"):
        methods += ["ifca", "moe-ifca"]
    if _enabled(cfg, "centralised"):
        methods.append("centralised")
    return methods


def _options(section: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(section, dict):
        return {}
    return {k: v for k, v in section.items() if k != "enabled" and k not in drop}


def migrate_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A format-1 config dict in format 2 (a format-2 one unchanged, as a copy): the
    ``methods`` list (after the top-level values), ``[federated]`` for ``[fedavg]``,
    ``[personalise]`` without the mixture keys, and ``method.<name>`` for each listed
    method with options; the ``*.enabled`` sections are gone."""
    if is_config_two(cfg):
        return _copy(cfg)
    methods = config_methods(cfg)
    personalise = cfg.get("personalise", {})
    moe: dict[str, Any] = {}
    staged: dict[str, Any] = {}
    for old, (new, shared) in MOE_KEYS.items():
        if old in personalise:
            moe[new] = personalise[old]
            if shared:
                staged[new] = personalise[old]
    # Format 1 always started the specialist from FT's model.
    moe["specialist"] = staged["specialist"] = "finetune"
    sections: dict[str, dict[str, Any]] = {
        "moe": moe,
        "moe-staged": staged,
        "moe-plus": _options(cfg.get("moe_plus")),
        "ifca": {k: v for k, v in _options(cfg.get("clustered")).items() if k == "models"},
        "moe-ifca": _options(cfg.get("moe_plus"), drop=("ablation",)),
        "centralised": _options(cfg.get("centralised")),
    }
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and "methods" not in out:
            out["methods"] = methods
        if key in ("moe_plus", "clustered", "centralised", "moe_staged"):
            continue
        if key == "fedavg":
            out["federated"] = value
        elif key == "personalise":
            out["personalise"] = {k: v for k, v in value.items() if k not in MOE_KEYS}
        else:
            out[key] = value
    out.setdefault("methods", methods)
    method = {m: sections[m] for m in methods if sections.get(m)}
    if method:
        out["method"] = method
    return _copy(out)


def _variants(ablation: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for label, entry in ablation.items():
        ordered = {k: entry[k] for k in VARIANT_KEYS if k in entry}
        out[label] = ordered | {k: v for k, v in entry.items() if k not in ordered}
    return out


def _method(results: dict[str, Any], name: str, scores: dict[str, Any]) -> dict[str, Any]:
    """One method's format-2 entry from the format-1 results."""
    label, description = METHODS.get(name, (name, ""))
    entry: dict[str, Any] = {"label": label, "description": description}
    entry["local_test"] = scores["local_test"]
    entry["global_test"] = scores["global_test"]
    entry["epochs"] = results.get("epochs", {}).get(name)
    if name in GATES and GATES[name] in results:
        entry["gate"] = results[GATES[name]]
    if name in GATES:
        entry["baselines"] = _copy(BASELINES)
    if name == "fedavg" and "fedavg" in results:
        entry["federation"] = results["fedavg"]
    if name == "ifca" and "clustered" in results:
        clustered = results["clustered"]
        entry["federation"] = {
            "best_round": clustered.get("best_round"),
            "rounds_run": clustered.get("rounds_run"),
            "history": clustered.get("history", []),
        }
        entry["details"] = {k: clustered[k] for k in IFCA_DETAILS if k in clustered}
    if name == "moe-plus" and "ablation" in results:
        entry["variants"] = _variants(results["ablation"])
    entry |= {k: v for k, v in scores.items() if k not in entry}
    return entry


def migrate(results: dict[str, Any]) -> dict[str, Any]:
    """Format-1 results (a dict of results.json) in format 2; format-2 results are
    returned unchanged (as a copy). Keys format 2 does not know are kept, last."""
    if is_format_two(results):
        return _copy(results)
    partition = results.get("partition", {})
    clients = results.get("clients", list(range(len(partition.get("opt_out", [])))))
    converted: dict[str, Any] = {
        "format": FORMAT,
        "fedmoe_version": results.get("fedmoe_version"),
        "engine": "flower" if results.get("engine") == "flower" else "simulator",
        "config": migrate_config(results.get("config", {})),
        "dataset": results.get("dataset"),
        "partition": partition,
        "clients": clients,
        "methods": {
            name: _method(results, name, scores)
            for name, scores in results.get("methods", {}).items()
        },
    }
    for key in TOP:
        if key not in converted and key in results:
            converted[key] = results[key]
    for key, value in results.items():
        if key not in converted and key not in CONVERTED:
            converted[key] = value
    return _copy(converted)


def migrate_file(path: Path) -> bool:
    """Convert ``path`` (a results.json) and the config.toml beside it in place;
    whether the results.json was converted."""
    results = json.loads(path.read_text(encoding="utf-8"))
    config = path.with_name("config.toml")
    if config.is_file():
        cfg = tomllib.loads(config.read_text(encoding="utf-8"))
        if not is_config_two(cfg):
            config.write_text(dumps_toml(migrate_config(cfg)), encoding="utf-8")
    if is_format_two(results):
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(migrate(results), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return True


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    files: list[Path] = []
    for arg in argv:
        path = Path(arg)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += sorted(path.rglob("results.json"))
        else:
            print(f"migrate-results: error: {path}: no such file or directory", file=sys.stderr)
            return 1
    try:
        converted = sum(migrate_file(f) for f in files)
    except (OSError, ValueError) as exc:  # JSON and TOML decode errors are ValueErrors
        print(f"migrate-results: error: {exc}", file=sys.stderr)
        return 1
    print(f"converted {converted} of {len(files)} results.json file(s) to format {FORMAT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
