"""Issue 20's study at a glance: every setting's top three and the target, from the
families' merged sweeps (what `scripts/head-to-head-study.sh FAMILY publish` writes).

    python scripts/head-to-head-summary.py docs/results/fashion-mnist/head-to-head

For each family directory there with a merged sweep (majority, dirichlet, new-clients,
rotated) and each of its cells, one row of a markdown table: the seeds the cell has,
its top three by local-test accuracy (mean ± std over seeds / global-test mean; fedmoe's
mixtures in bold), the best-ranked mixture minus the best baseline on local test,
paired seed by seed (with the seeds it is ahead), that mixture's global-test accuracy
as a fraction of FedAvg's, and the target: some mixture ahead of every baseline on
local test (the centralised bound aside) whose global-test accuracy is >= 0.9 x
FedAvg's. The target applies at p >= 0.5 (the new-clients cells, at p = 0.8, included),
at every alpha and in the rotated setting; at p = 0.2 its column shows "-".
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedmoe.errors import FedmoeError
from fedmoe.report.leaderboard import BOUNDS, best_baseline, cell_title, percent, ranking
from fedmoe.report.paired import differences, signed_mean
from fedmoe.sweep.reader import Cell, Sweep, accuracy, read_sweep

FAMILIES = ("majority", "dirichlet", "new-clients", "rotated")
#: The global-test floor, as a fraction of FedAvg's.
FLOOR = 0.9
HEADING = """# The head-to-head at a glance

Every setting's top three by local-test accuracy (client mean; mean ± std over seeds /
global-test mean, in %; fedmoe's mixtures in bold), the best-ranked mixture against the
best baseline, paired seed by seed, and issue 20's target: a mixture ahead of every
baseline on local test whose global-test accuracy stays >= 0.9 x FedAvg's (at p >= 0.5,
the new-clients cells at p = 0.8 included, every alpha and the rotated setting). Each
family's report.md has the whole leaderboard.
Written by `python scripts/head-to-head-summary.py docs/results/fashion-mnist/head-to-head`.
"""


def target_applies(sweep: Sweep, cell: Cell) -> bool:
    """Whether issue 20's target covers ``cell``: everywhere but below p = 0.5 (a family
    without ``p`` in its grid, such as new-clients at p = 0.8, is covered)."""
    for key, value in zip(sweep.keys, cell.grid, strict=True):
        if key == "p" and value.number is not None and value.number < 0.5:
            return False
    return True


def _entry(sweep: Sweep, cell: Cell, method: str) -> str:
    name = sweep.label(method)
    if method in sweep.contenders:
        name = f"**{name}**"
    glob = accuracy(cell, method, "global")
    return f"{name} {percent(accuracy(cell, method, 'local'))} / {100 * glob.mean:.2f}"


def _ratio(cell: Cell, method: str) -> float:
    """``method``'s global-test accuracy over FedAvg's (means over seeds)."""
    fedavg = accuracy(cell, "fedavg", "global")
    if not fedavg.n or fedavg.mean <= 0:
        raise FedmoeError(f"cell {cell.name} has no FedAvg rows to hold the floor against")
    return accuracy(cell, method, "global").mean / fedavg.mean


def _paired(cell: Cell, method: str, baseline: str) -> str:
    points = [100 * d for d in differences(cell, method, baseline, "local")]
    if not points:
        return "-"
    return f"{signed_mean(points)} ({sum(p > 0 for p in points)} of {len(points)})"


def _target(sweep: Sweep, cell: Cell, best: str) -> str:
    """ "met (mixture)" where a mixture is ahead of ``best`` (the best baseline) and holds
    the floor; otherwise "NOT met" with why, for the best-ranked mixture."""
    bar = accuracy(cell, best, "local").mean
    ahead = [m for m in ranking(cell, sweep.contenders) if accuracy(cell, m, "local").mean > bar]
    for method in ahead:
        if _ratio(cell, method) >= FLOOR:
            return f"met ({sweep.label(method)})"
    if ahead:
        return f"NOT met: first, {sweep.label(ahead[0])}, below the floor"
    return "NOT met: no mixture first"


def _seeds(sweep: Sweep, cell: Cell) -> str:
    counts = sorted({len(cell.seeds(m)) for m in sweep.methods if cell.seeds(m)})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def rows(family: str, sweep: Sweep) -> list[str]:
    """One table row per cell of a family's merged sweep."""
    lines = []
    for cell in sweep.cells:
        order = ranking(cell, sweep.methods)
        best = best_baseline(sweep, cell)
        mixtures = ranking(cell, sweep.contenders)
        if best is None or not mixtures:
            raise FedmoeError(f"{sweep.directory}: cell {cell.name} lacks a mixture or a baseline")
        top = [_entry(sweep, cell, m) for m in order[:3]]
        mixture = mixtures[0]
        against = f"{sweep.label(mixture)} - {sweep.label(best)}: {_paired(cell, mixture, best)}"
        target = _target(sweep, cell, best) if target_applies(sweep, cell) else "-"
        lines.append(
            f"| {family} {cell_title(sweep, cell)} | {_seeds(sweep, cell)} | "
            + " | ".join(top + [""] * (3 - len(top)))
            + f" | {against} | {_ratio(cell, mixture):.3f} | {target} |"
        )
    return lines


def table(root: Path) -> str:
    """The study's summary table over the families merged under ``root``."""
    found = [(f, root / f) for f in FAMILIES if (root / f / "sweep.csv").is_file()]
    if not found:
        raise FedmoeError(f"{root}: no merged family ({', '.join(FAMILIES)}) with a sweep.csv")
    lines = [
        "| setting | seeds | 1st | 2nd | 3rd | best mixture - best baseline, local "
        "(seeds ahead) | its global / FedAvg's | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for family, directory in found:
        lines.extend(rows(family, read_sweep(directory)))
    bounds = ", ".join(BOUNDS)
    return (
        "\n".join(lines)
        + f"\n\n(Local / global test %; bounds ranked but never a baseline: {bounds}.)"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 2
    try:
        print(HEADING + "\n" + table(Path(argv[0])))
    except FedmoeError as exc:
        print(f"head-to-head-summary: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
