"""Issue 7's targets, checked on a sweep directory (what `fedmoe sweep` writes).

    python scripts/targets.py docs/results/fashion-mnist/paper-plus moe-ifca moe-plus moe

For each method named (a mixture), and each p of the sweep, on the means over seeds:

- local: method >= FT + 1 point (at p in 0.5..0.9),
- global: method >= 0.9 x FedAvg (at p in 0.5..0.9),
- every p: method's local >= max(FT, Local).

Prints one markdown table per method with the numbers and "met" / "NOT met", how many
seeds each cell has (a target is only established with 3) and local - FT per seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedmoe.errors import FedmoeError
from fedmoe.report.paired import differences
from fedmoe.sweep.reader import Cell, accuracy, read_sweep

FEDERATION_REACH = (0.5, 0.6, 0.7, 0.8, 0.9)


def _mean(cell: Cell, method: str, split: str) -> float:
    stat = accuracy(cell, method, split)
    if not stat.n:
        raise FedmoeError(f"cell {cell.name} has no {method!r} rows")
    return 100 * stat.mean


def _per_seed(cell: Cell, method: str) -> str:
    """``method``'s local-test accuracy minus FT's in each seed, in points."""
    return ", ".join(f"{100 * d:+.2f}" for d in differences(cell, method, "finetune", "local"))


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def table(directory: Path, method: str) -> str:
    sweep = read_sweep(directory)
    if "p" not in sweep.keys:
        raise FedmoeError(f"{directory}: the sweep has no p grid key")
    at = sweep.keys.index("p")
    lines = [
        f"{sweep.label(method)}:",
        "",
        "| p | seeds | local | FT | Local | local - FT | per seed | >= FT + 1 "
        "| >= max(FT, Local) | global | FedAvg | global / FedAvg | >= 0.9 x FedAvg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in sweep.cells:
        p = cell.grid[at].number
        local, ft, loc = (_mean(cell, m, "local") for m in (method, "finetune", "local"))
        glob, fedavg = _mean(cell, method, "global"), _mean(cell, "fedavg", "global")
        reach = p is not None and round(p, 6) in FEDERATION_REACH
        lines.append(
            f"| {cell.grid[at].text} | {len(cell.seeds(method))} | {local:.2f} | {ft:.2f} "
            f"| {loc:.2f} | {local - ft:+.2f} | {_per_seed(cell, method)} "
            f"| {_verdict(local >= ft + 1) if reach else '-'} "
            f"| {_verdict(local >= max(ft, loc))} | {glob:.2f} | {fedavg:.2f} "
            f"| {glob / fedavg:.3f} | {_verdict(glob >= 0.9 * fedavg) if reach else '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        for method in argv[1:]:
            print(table(Path(argv[0]), method), end="\n\n")
    except FedmoeError as exc:
        print(f"targets: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
