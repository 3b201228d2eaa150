"""The sweep report's tuning section: which cell of the grid each method would choose
on validation.

Each method's client-mean accuracy on the clients' validation sets (``val`` in its
results.json entry), mean over seeds, for every cell; per method whose validation
accuracy differs between cells, the cell with the highest is its choice (the first
such cell on a tie). Test accuracy is shown beside the choice, never chosen on. Runs
written before the validation scores existed have none: the section is left out. So
is it for a grid over the data (the partition, the data set: a study's settings), whose
cells are different problems rather than candidates to choose among.
"""

from __future__ import annotations

import math
from typing import Any

from fedmoe.report.leaderboard import cell_title, percent
from fedmoe.sweep.reader import Cell, Stat, Sweep, accuracy, canonical, runs_of

#: Config entries (and the sections they lead) that describe the data, not a method.
DATA_KEYS = ("dataset", "data_dir", "data", "partition")


def validation(sweep: Sweep, cell: Cell, method: str) -> Stat:
    """Client-mean validation accuracy of ``method`` in ``cell``, over seeds (n = 0
    where its runs have no validation scores)."""
    found = []
    for results in runs_of(sweep, cell, method):
        entry: Any = results.get("methods", {}).get(method, {})
        mean = entry.get("val", {}).get("mean") if isinstance(entry, dict) else None
        if isinstance(mean, int | float) and math.isfinite(mean):
            found.append(float(mean))
    return Stat.of(found)


def choices(sweep: Sweep) -> dict[str, Cell]:
    """Per method whose validation accuracy differs between cells, its best cell."""
    chosen = {}
    for method in sweep.methods:
        scored = [(c, validation(sweep, c, method)) for c in sweep.cells]
        scored = [(c, s) for c, s in scored if s.n]
        if len({s.mean for _, s in scored}) > 1:
            chosen[method] = max(scored, key=lambda cs: cs[1].mean)[0]
    return chosen


def is_data(key: str) -> bool:
    """Whether the grid key ``key`` varies the data rather than a method or its training."""
    return canonical(key).split(".")[0] in DATA_KEYS


def tuning_section(sweep: Sweep) -> str:
    """The report's tuning section (empty without a grid or validation scores, or for a
    grid over the data)."""
    if not sweep.keys or len(sweep.cells) < 2 or any(map(is_data, sweep.keys)):
        return ""
    chosen = choices(sweep)
    if not chosen:
        return ""
    methods = list(chosen)
    head = [*sweep.keys, *(sweep.label(m).replace("|", "\\|") for m in methods)]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(sweep.keys) + "---:|" * len(methods),
    ]
    for cell in sweep.cells:
        values = [v.text for v in cell.grid]
        for method in methods:
            stat = validation(sweep, cell, method)
            text = percent(stat)
            values.append(f"**{text}**" if cell is chosen[method] else text)
        lines.append("| " + " | ".join(values) + " |")
    picks = []
    for method in methods:
        cell = chosen[method]
        local, glob = accuracy(cell, method, "local"), accuracy(cell, method, "global")
        picks.append(
            f"- {sweep.label(method)}: {cell_title(sweep, cell)} (validation "
            f"{percent(validation(sweep, cell, method))}%; local test {percent(local)}%, "
            f"global test {percent(glob)}%)"
        )
    return (
        "## Chosen on validation\n\n"
        "Client-mean accuracy (%) on the clients' validation sets, mean ± std over seeds, "
        "for each method whose validation accuracy differs between cells; its best cell "
        "in bold is its choice. Test accuracy is shown for the choice, never chosen on.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(picks)
        + "\n\n"
    )
