"""Writing and rendering results: results.json, results.md, rounds.csv, config.toml.

Generic over results.json format 2 (docs/results-format.md): each method's entry gives
its ``label``; every method with a ``gate`` gets a gate line in results.md; rounds.csv
is the first method with a ``federation``'s history.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedmoe.experiment.config import dumps_toml


def _cell(summary: dict[str, Any]) -> str:
    return (
        f"{100 * summary['mean']:.1f} ± {100 * summary['std']:.1f} (min {100 * summary['min']:.1f})"
    )


def results_table(results: dict[str, Any]) -> str:
    """The methods' accuracies as a markdown table (percent, mean ± std over clients)."""
    lines = [
        "| method | local test acc. % | global test acc. % |",
        "|---|---|---|",
    ]
    for name, m in results["methods"].items():
        label = str(m.get("label", name)).replace("|", "\\|")
        lines.append(f"| {label} | {_cell(m['local_test'])} | {_cell(m['global_test'])} |")
    return "\n".join(lines)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def gate_lines(results: dict[str, Any]) -> list[str]:
    """One line per method with a ``gate``: its mean weight on the specialist on the
    clients' majority-class and other local-test samples (none where either is empty)."""
    lines = []
    for name, m in results["methods"].items():
        gate = m.get("gate")
        if not isinstance(gate, dict) or "local_test" not in gate:
            continue
        majority = _mean(gate["local_test"].get("majority", []))
        other = _mean(gate["local_test"].get("other", []))
        if majority is not None and other is not None:
            lines.append(
                f"{m.get('label', name)} gate weight on the specialist (local test, mean "
                f"over clients): {majority:.3f} on majority-class samples, {other:.3f} on "
                "other samples."
            )
    return lines


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
    gates = "".join(f"\n\n{line}" for line in gate_lines(results))
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in results["timing_s"].items())
    return head + results_table(results) + gates + f"\n\nTime: {timing}.\n"


def federation_history(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The history of the first method with a ``federation`` (empty if none has)."""
    for m in results["methods"].values():
        federation = m.get("federation")
        if isinstance(federation, dict):
            history: list[dict[str, Any]] = federation.get("history", [])
            return history
    return []


def rounds_csv(results: dict[str, Any]) -> str:
    """The first federated method's per-round metrics as CSV (empty cells for missing
    values; just the header when no method has a federated phase)."""

    def number(v: float | None) -> str:
        return "" if v is None else f"{v:.6f}"

    lines = ["round,val_loss,val_accuracy,improved,clients"]
    for r in federation_history(results):
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
