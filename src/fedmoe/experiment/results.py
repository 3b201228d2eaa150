"""Writing and rendering results: results.json, results.md, config.toml."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedmoe.experiment.config import dumps_toml
from fedmoe.experiment.sweep_format import METHOD_LABELS


def _cell(summary: dict[str, Any]) -> str:
    return (
        f"{100 * summary['mean']:.1f} ± {100 * summary['std']:.1f} (min {100 * summary['min']:.1f})"
    )


def results_table(results: dict[str, Any]) -> str:
    """The methods' accuracies as a markdown table (percent, mean ± std over clients)."""
    pool = results.get("moe_pool", "probability")
    lines = [
        "| method | local test acc. % | global test acc. % |",
        "|---|---|---|",
    ]
    for name, m in results["methods"].items():
        label = METHOD_LABELS.get(name, name) + (f" ({pool} pool)" if name == "moe" else "")
        lines.append(f"| {label} | {_cell(m['local_test'])} | {_cell(m['global_test'])} |")
    return "\n".join(lines)


def results_markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    part = cfg["partition"]
    head = (
        f"# fedmoe results\n\n"
        f"Dataset `{results['dataset']['name']}` ({results['dataset']['source']}), model "
        f"`{results['dataset']['model']}`; {part['clients']} clients, scheme `{part['scheme']}` "
        f"(p={part['p']}, overlap={part['overlap']}), {part['train']}/{part['val']}/{part['test']} "
        f"train/val/test per client, opt-out {part['opt_out']}; seed {cfg['seed']}.\n\n"
        "Accuracy over clients: mean ± std (min), in percent.\n\n"
    )
    gate = results["gate"]["local_test"]
    gate_line = ""
    majority = [v for v in gate["majority"] if v is not None]
    other = [v for v in gate["other"] if v is not None]
    if majority and other:
        gate_line = (
            f"\n\nMoE gate weight on the specialist (local test, mean over clients): "
            f"{sum(majority) / len(majority):.3f} on majority-class samples, "
            f"{sum(other) / len(other):.3f} on other samples."
        )
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in results["timing_s"].items())
    return head + results_table(results) + gate_line + f"\n\nTime: {timing}.\n"


def rounds_csv(results: dict[str, Any]) -> str:
    """The federated phase's per-round metrics as CSV (empty cells for missing values)."""

    def number(v: float | None) -> str:
        return "" if v is None else f"{v:.6f}"

    lines = ["round,val_loss,val_accuracy,improved,clients"]
    for r in results["fedavg"]["history"]:
        clients = " ".join(str(c) for c in r["clients"])
        row = [
            str(r["round"]),
            number(r["val_loss"]),
            number(r["val_accuracy"]),
            str(int(r["improved"])),
        ]
        lines.append(",".join([*row, clients]))
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out: Path) -> None:
    """Write ``results.json``, ``results.md``, ``rounds.csv`` and ``config.toml`` into
    ``out``; ``results.json`` last, since its presence marks a finished run."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(results_markdown(results))
    (out / "rounds.csv").write_text(rounds_csv(results))
    (out / "config.toml").write_text(dumps_toml(results["config"]))
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out / "results.json")
