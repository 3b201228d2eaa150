"""The sweep report's leaderboard: which personalised model should a client use?

Per cell, every method ranked by its local-test accuracy (client mean, then mean over
seeds), with its global-test accuracy, its worst clients (the mean local-test accuracy
of the worst tenth of clients, at least one, averaged over seeds), its new clients'
(where a cell has opt-out clients: their mean local-test accuracy, averaged over
seeds; they took no part in federation and were personalised afterwards from what it
produced) and its compute time
(the method's phase in ``timing_s``: its federated phase and personalisation; the
shared evaluation is not split by method). Under each table, each contender (a method
under test: fedmoe's mixtures, or any method whose results say ``contender``) against
the best baseline of the cell (the highest-ranked method that is neither a contender
nor the centralised bound; a mixture from the field such as PFL-MoE is a baseline):
the per-seed paired difference on local test, with the seeds it is ahead, and its
global-test accuracy as a fraction of FedAvg's.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from fedmoe.report.paired import differences, signed_mean
from fedmoe.sweep.reader import Cell, Stat, Sweep, accuracy, diverged, runs_of

#: Methods that are bounds, not candidates: never "the best baseline".
BOUNDS = ("centralised",)
#: The share of clients the "worst clients" column averages over.
WORST = 0.1


def percent(stat: Stat) -> str:
    """A statistic of accuracies in percent: mean, ± std with several seeds; - for none."""
    if not stat.n or math.isnan(stat.mean):
        return "-"
    if stat.n == 1:
        return f"{100 * stat.mean:.2f}"
    return f"{100 * stat.mean:.2f} ± {100 * stat.std:.2f}"


def worst_clients(per_client: Sequence[float], share: float = WORST) -> float:
    """The mean of the lowest ``share`` of ``per_client`` (at least one client)."""
    values = sorted(v for v in per_client if not math.isnan(v))
    if not values:
        return math.nan
    count = max(1, math.ceil(share * len(values)))
    return statistics.fmean(values[:count])


def _worst(sweep: Sweep, cell: Cell, method: str) -> Stat:
    found = []
    for results in runs_of(sweep, cell, method):
        per_client = results["methods"][method]["local_test"]["per_client"]
        found.append(worst_clients([float(v) for v in per_client]))
    return Stat.of(found)


def new_clients(results: dict[str, Any], method: str) -> float:
    """The mean local-test accuracy of a run's opt-out clients (clients that took no part
    in federation and were personalised from what it produced); NaN without any."""
    opt_out = results.get("partition", {}).get("opt_out", [])
    per_client = results["methods"][method]["local_test"]["per_client"]
    values = [float(a) for a, out in zip(per_client, opt_out, strict=False) if out]
    return statistics.fmean(values) if values else math.nan


def _new(sweep: Sweep, cell: Cell, method: str) -> Stat:
    found = [new_clients(r, method) for r in runs_of(sweep, cell, method)]
    return Stat.of([v for v in found if not math.isnan(v)])


def _has_new_clients(sweep: Sweep, cell: Cell) -> bool:
    return any(any(r.get("partition", {}).get("opt_out", [])) for r in runs_of(sweep, cell))


def _seconds(sweep: Sweep, cell: Cell, method: str) -> str:
    times = [
        float(r.get("timing_s", {}).get(method, math.nan)) for r in runs_of(sweep, cell, method)
    ]
    times = [t for t in times if not math.isnan(t)]
    return f"{statistics.fmean(times):,.0f}" if times else "-"


def ranking(cell: Cell, methods: Sequence[str]) -> list[str]:
    """``methods`` of ``cell`` by local-test accuracy (mean over seeds), best first."""
    present = [m for m in methods if accuracy(cell, m, "local").n]
    return sorted(present, key=lambda m: -accuracy(cell, m, "local").mean)


def best_baseline(sweep: Sweep, cell: Cell) -> str | None:
    """The cell's highest-ranked method that is neither a contender nor a bound."""
    for method in ranking(cell, sweep.methods):
        if method not in sweep.contenders and method not in BOUNDS:
            return method
    return None


def _table(sweep: Sweep, cell: Cell) -> str:
    new = _has_new_clients(sweep, cell)
    lines = [
        "| rank | method | local test (%) | global test (%) | worst 10% of clients, local (%) "
        + ("| new clients, local (%) " if new else "")
        + "| method's phases (s) |",
        "|---:|---|---:|---:|---:|---:|" + ("---:|" if new else ""),
    ]
    for rank, method in enumerate(ranking(cell, sweep.methods), 1):
        name = sweep.label(method).replace("|", "\\|")
        if method in sweep.contenders:
            name = f"**{name}**"
        cells = [
            str(rank),
            name,
            percent(accuracy(cell, method, "local")),
            percent(accuracy(cell, method, "global")),
            percent(_worst(sweep, cell, method)),
            *([percent(_new(sweep, cell, method))] if new else []),
            _seconds(sweep, cell, method),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _coverage(sweep: Sweep, cell: Cell) -> str:
    """Where a cell is not yet complete (a study in progress, merged from groups that
    ran so far): the sweep's methods with no run in it, and those over fewer seeds than
    the most any method has there. Empty for a complete cell."""
    counts = {m: len(cell.seeds(m)) for m in sweep.methods}
    most = max(counts.values(), default=0)
    missing = [sweep.label(m) for m, n in counts.items() if n == 0]
    fewer = [f"{sweep.label(m)} ({n})" for m, n in counts.items() if 0 < n < most]
    lines = []
    if missing:
        lines.append(f"- Not run in this cell (yet): {', '.join(missing)}.")
    if fewer:
        lines.append(f"- Over fewer seeds than the {most} of others here: {', '.join(fewer)}.")
    return "\n".join(lines)


def _diverged(sweep: Sweep, cell: Cell) -> str:
    """The methods whose federated phase diverged in this cell, seed by seed (what they
    report is the best round validated before it)."""
    found = []
    for method in sweep.methods:
        where = zip(cell.seeds(method), runs_of(sweep, cell, method), strict=True)
        runs = [(s, d) for s, r in where if (d := diverged(r, method)) is not None]
        if runs:
            text = "; ".join(f"seed {s}: round {d}, kept round {b}" for s, (d, b) in runs)
            found.append(f"{sweep.label(method)} ({text})")
    if not found:
        return ""
    return (
        "- Diverged (the server model's validation loss became non-finite; the method "
        f"uses the best round validated before it): {', '.join(found)}."
    )


def _against_best(sweep: Sweep, cell: Cell) -> str:
    best = best_baseline(sweep, cell)
    if best is None or not sweep.contenders:
        return ""
    fedavg = accuracy(cell, "fedavg", "global")
    lines = []
    for contender in sweep.contenders:
        diffs = differences(cell, contender, best, "local")
        if not diffs:
            continue
        points = [100 * d for d in diffs]
        ahead = sum(p > 0 for p in points)
        line = (
            f"- {sweep.label(contender)} minus {sweep.label(best)} (the best baseline), local "
            f"test: {signed_mean(points)} points, ahead in {ahead} of {len(points)} seed(s)"
        )
        ours = accuracy(cell, contender, "global")
        if fedavg.n and fedavg.mean > 0 and ours.n:
            line += f"; global test {ours.mean / fedavg.mean:.3f} x FedAvg's"
        lines.append(line)
    return "\n".join(lines)


def cell_title(sweep: Sweep, cell: Cell) -> str:
    """A cell's grid values as ``key = value, ...`` (empty without grid keys)."""
    return ", ".join(f"{k} = {v.text}" for k, v in zip(sweep.keys, cell.grid, strict=True))


def leaderboard_section(sweep: Sweep) -> str:
    """The report's leaderboard section (empty for a sweep of fewer than two methods)."""
    if len(sweep.methods) < 2:
        return ""
    parts = [
        "## Leaderboard\n\n"
        "Per cell, methods by local-test accuracy (client mean; mean ± std over seeds), "
        "the methods under test (fedmoe's mixtures) in bold; the worst tenth of clients' "
        "mean local-test accuracy; the "
        "seconds of the method's own phase (federated and personalisation; evaluation "
        "is shared); where a cell has opt-out clients, their mean local-test accuracy "
        "apart, as new clients (they took no part in federation and were personalised "
        "from what it produced). Below each table, each method under test against the cell's "
        "best baseline (neither under test nor the centralised bound; the field's mixtures, "
        "such as PFL-MoE, are baselines), paired seed by seed (the same clients).\n\n"
    ]
    for cell in sweep.cells:
        title = cell_title(sweep, cell)
        parts.append(f"### {title or cell.name}\n\n{_table(sweep, cell)}\n\n")
        for notes in (_coverage(sweep, cell), _diverged(sweep, cell)):
            if notes:
                parts.append(f"{notes}\n\n")
        against = _against_best(sweep, cell)
        if against:
            parts.append(f"{against}\n\n")
    return "".join(parts)
