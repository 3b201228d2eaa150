"""Paired comparisons for the sweep report: each mixture against the baselines, seed by
seed.

Two methods' results from the same run (same cell and seed) share the partition, the
global model and the fine-tuned specialists, so their difference is a much sharper
measure than the difference of their means over seeds: most of the spread between
seeds is common to both and cancels. Per cell, a comparison is the per-seed difference
in accuracy points, as ``mean ± sample std`` over the seeds that ran both methods,
with the number of those seeds where the mixture came out ahead.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from fedmoe.experiment.sweep_format import METHOD_LABELS
from fedmoe.experiment.sweep_results import Cell, Sweep

#: The mixtures compared, in report order.
MIXTURES = ("moe", "moe-staged", "moe-plus", "moe-ifca")
#: What each is compared with on each split: the personalised baselines on the local
#: test sets, the federated model (and FT) on the global test set.
BASELINES = {"local": ("finetune", "local"), "global": ("fedavg", "finetune")}


def differences(cell: Cell, method: str, baseline: str, split: str) -> list[float]:
    """``method`` minus ``baseline`` (accuracy in [0, 1]) on ``split`` (``local`` or
    ``global``) for each seed of ``cell`` that ran both, in seed order."""
    ours = {r.seed: r for r in cell.rows if r.method == method}
    theirs = {r.seed: r for r in cell.rows if r.method == baseline}
    return [
        ours[s].accuracy(split) - theirs[s].accuracy(split) for s in sorted(ours.keys() & theirs)
    ]


def _entry(diffs: Sequence[float]) -> str:
    if not diffs:
        return "-"
    points = [100 * d for d in diffs]
    ahead = sum(p > 0 for p in points)
    text = f"{statistics.fmean(points):+.2f}"
    if len(points) > 1:
        text += f" ± {statistics.stdev(points):.2f}"
    return f"{text} ({ahead}/{len(points)})"


def pairs(sweep: Sweep, split: str) -> list[tuple[str, str]]:
    """The (mixture, baseline) pairs of ``split`` whose methods the sweep has."""
    return [
        (m, b)
        for m in MIXTURES
        if m in sweep.methods
        for b in BASELINES[split]
        if b in sweep.methods
    ]


def paired_table(sweep: Sweep, split: str) -> str:
    """Markdown table: one row per cell, one column per pair of :func:`pairs`; empty
    when there is no pair."""
    columns = pairs(sweep, split)
    if not columns:
        return ""
    keys = [k.replace("|", "\\|") for k in sweep.keys] or ["cell"]
    head = [*keys, *(f"{METHOD_LABELS[m]} - {METHOD_LABELS[b]}" for m, b in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in sweep.cells:
        grid = [v.text for v in cell.grid] or [cell.name]
        entries = [_entry(differences(cell, m, b, split)) for m, b in columns]
        lines.append("| " + " | ".join(s.replace("|", "\\|") for s in [*grid, *entries]) + " |")
    return "\n".join(lines)


def paired_section(sweep: Sweep) -> str:
    """The report's section of paired differences (empty without a mixture)."""
    if not pairs(sweep, "local"):
        return ""
    return (
        "## Paired differences\n\n"
        "Each mixture minus a baseline within the same run (same cell and seed: same "
        "partition, global model and specialists), in accuracy points: mean ± std over "
        "seeds (no ± with one seed), and in parentheses the seeds where the mixture is "
        "ahead / the seeds compared.\n\n"
        "### On each client's local test set\n\n"
        f"{paired_table(sweep, 'local')}\n\n"
        "### On the global test set\n\n"
        f"{paired_table(sweep, 'global')}\n\n"
    )
