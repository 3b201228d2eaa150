"""Paired comparisons for the sweep report: each method against the baselines its
results name (``baselines`` in results.json), seed by seed.

Two methods' results of the same cell and seed share the partition (the same clients,
also across merged sweeps, :mod:`fedmoe.sweep.merge`), and within one run whatever the
methods build on (the global model, the fine-tuned specialists), so their difference
is a much sharper measure than the difference of their means over seeds:
most of the spread between seeds is common to both and cancels. Per cell, a comparison
is the per-seed difference in accuracy points, as ``mean ± sample std`` over the seeds
that ran both methods, with the number of those seeds where the method came out ahead.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from fedmoe.sweep.reader import Cell, Sweep


def differences(cell: Cell, method: str, baseline: str, split: str) -> list[float]:
    """``method`` minus ``baseline`` (accuracy in [0, 1]) on ``split`` (``local`` or
    ``global``) for each seed of ``cell`` that ran both, in seed order."""
    ours = {r.seed: r for r in cell.rows if r.method == method}
    theirs = {r.seed: r for r in cell.rows if r.method == baseline}
    return [
        ours[s].accuracy(split) - theirs[s].accuracy(split) for s in sorted(ours.keys() & theirs)
    ]


def signed_mean(points: Sequence[float]) -> str:
    """Paired differences in points as ``+mean``, with `` ± sample std`` over several."""
    text = f"{statistics.fmean(points):+.2f}"
    if len(points) > 1:
        text += f" ± {statistics.stdev(points):.2f}"
    return text


def _entry(diffs: Sequence[float]) -> str:
    if not diffs:
        return "-"
    points = [100 * d for d in diffs]
    ahead = sum(p > 0 for p in points)
    return f"{signed_mean(points)} ({ahead}/{len(points)})"


def pairs(sweep: Sweep, split: str) -> list[tuple[str, str]]:
    """The (method, baseline) pairs of ``split`` (``local`` or ``global``): each method
    with baselines, in method order, and each of its baselines on that split that the
    sweep has, in the order its results list them."""
    return [
        (m, b)
        for m in sweep.methods
        for b in sweep.info[m].baselines.get(split, ())
        if b in sweep.methods and b != m
    ]


def paired_table(sweep: Sweep, split: str) -> str:
    """Markdown table: one row per cell, one column per pair of :func:`pairs`; empty
    when there is no pair."""
    columns = pairs(sweep, split)
    if not columns:
        return ""
    keys = list(sweep.keys) or ["cell"]
    head = [*keys, *(f"{sweep.label(m)} - {sweep.label(b)}" for m, b in columns)]
    lines = ["| " + " | ".join(s.replace("|", "\\|") for s in head) + " |"]
    lines.append("|" + "---|" * len(head))
    for cell in sweep.cells:
        grid = [v.text for v in cell.grid] or [cell.name]
        entries = [_entry(differences(cell, m, b, split)) for m, b in columns]
        lines.append("| " + " | ".join(s.replace("|", "\\|") for s in [*grid, *entries]) + " |")
    return "\n".join(lines)


def paired_section(sweep: Sweep) -> str:
    """The report's section of paired differences (empty without a pair)."""
    local, glob = paired_table(sweep, "local"), paired_table(sweep, "global")
    if not local and not glob:
        return ""
    parts = [
        "## Paired differences\n\n"
        "Each method minus each of the baselines its results name, seed by seed (same "
        "cell and seed: the same clients; within one run also the same global model and "
        "specialists), in accuracy points: mean ± std over seeds (no ± with one seed), and "
        "in parentheses the seeds where the method is ahead / the seeds compared.\n\n"
    ]
    if local:
        parts.append(f"### On each client's local test set\n\n{local}\n\n")
    if glob:
        parts.append(f"### On the global test set\n\n{glob}\n\n")
    return "".join(parts)
