"""Turn child results into rows, the targets check, a table, JSON and BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata

from bench.flops import job_flops
from bench.plan import BASELINE, Planned
from bench.runner import ChildResult

GIB = 1024.0


@dataclass
class Row:
    """One line of the table. ``ratio``: fedmoe's samples/s over this row's on the same
    workload (> 1: fedmoe is faster); ``peak_fraction``: achieved FLOP/s over the
    measured fp32 matmul peak."""

    label: str
    contender: str
    clients: int
    participants: int
    samples: int
    status: str
    seconds: float | None = None
    samples_per_s: float | None = None
    peak_rss_mib: float | None = None
    ratio: float | None = None
    gflops: float | None = None
    peak_fraction: float | None = None
    notes: list[str] = field(default_factory=list)


def make_rows(results: list[tuple[Planned, ChildResult]], peak_flops: float) -> list[Row]:
    """One row per result (two for Flower: without and with Ray start-up), ratios filled
    in against fedmoe on the same workload."""
    rows: list[Row] = []
    for planned, child in results:
        rows.extend(_rows_of(planned, child, peak_flops))
    base = {r.label: r.samples_per_s for r in rows if r.contender == BASELINE}
    for r in rows:
        b = base.get(r.label)
        if b and r.samples_per_s:
            r.ratio = b / r.samples_per_s
    return rows


def _rows_of(planned: Planned, child: ChildResult, peak_flops: float) -> list[Row]:
    job, rec = planned.job, child.record or {}
    row = Row(planned.label, planned.contender, job.clients, job.participants, job.samples, "ok")
    if child.not_run:
        row.status = "not run"
        row.notes.append(child.not_run)
        return [row]
    row.peak_rss_mib = max(child.tree_peak_rss_mib, number(rec.get("peak_rss_self_mib", 0.0)))
    if child.max_processes > 1:
        row.notes.append(f"RSS summed over {child.max_processes} processes")
    if child.timed_out:
        row.status = "timeout"
        row.notes.append(f"timed out after {child.wall_seconds:.0f} s")
        return [row]
    if "skipped" in rec:
        row.status = "cannot express"
        row.notes.append(str(rec["skipped"]))
        return [row]
    if "seconds" not in rec:
        row.status = "error"
        last = [line for line in child.output_tail.splitlines() if line.strip()][-1:]
        row.notes.append(str(rec.get("error", last[0] if last else "no result line")))
        return [row]
    notes = rec.get("notes", [])
    if isinstance(notes, list):
        row.notes.extend(str(n) for n in notes)
    if job.workload == "W3" or job.participants < job.clients:
        row.notes.insert(0, f"{job.participants:,} of {job.clients:,} clients train")
    out = [_timed(row, number(rec["seconds"]), job_flops(job), peak_flops)]
    startup = rec.get("seconds_with_startup")
    if startup is not None:
        extra = Row(**{**asdict(row), "contender": f"{row.contender} +start-up", "notes": []})
        extra.notes.append("incl. Ray start, worker start and warm-up round")
        out.append(_timed(extra, number(startup), job_flops(job), peak_flops))
    return out


def number(value: object) -> float:
    if not isinstance(value, int | float):
        raise TypeError(f"expected a number in a result line, got {value!r}")
    return float(value)


def _timed(row: Row, seconds: float, flops: int, peak_flops: float) -> Row:
    row.seconds = seconds
    row.samples_per_s = row.samples / seconds
    row.gflops = flops / seconds / 1e9
    row.peak_fraction = flops / seconds / peak_flops
    if row.label.startswith("W3"):
        row.notes.insert(0, f"{1000 * seconds / row.participants:.2f} ms/participant")
    return row


def check_targets(rows: list[Row]) -> list[dict[str, object]]:
    """The issue's targets, each with the measured value and whether it is met."""
    out: list[dict[str, object]] = []
    by = {(r.label, r.contender): r for r in rows if r.status == "ok"}
    # Issue 19's targets: the engine at its best in float32 on the same cores (one
    # process, or one-thread workers), against the loop on W1 and Flower on W2.
    for label, other, need in (("W1", "torch-loop", 4.0), ("W2", "flower", 2.0)):
        ours = [by[(label, c)] for c in (BASELINE, "fedmoe-workers") if (label, c) in by]
        theirs = by.get((label, other))
        if ours and theirs is not None and theirs.samples_per_s:
            best = max(ours, key=lambda r: r.samples_per_s or 0.0)
            ratio = (best.samples_per_s or 0.0) / theirs.samples_per_s
            name = f"{label}: fedmoe (best fp32: {best.contender}) vs {other} >= {need:g}x"
            out.append(_target(name, ratio, ratio >= need))
    for label in ("W1", "W2"):
        base = by.get((label, BASELINE))
        if base is None:
            continue
        r = by.get((label, "pfl"))
        if r is not None and r.ratio is not None:
            out.append(_target(f"{label}: fedmoe vs pfl > 1x", r.ratio, r.ratio > 1.0))
        if base.peak_fraction is not None:
            out.append(
                _target(
                    f"{label}: fedmoe >= 20% of matmul peak",
                    base.peak_fraction,
                    base.peak_fraction >= 0.2,
                )
            )
    w3 = [r for r in rows if r.label.startswith("W3") and r.contender == BASELINE]
    w3 = [r for r in w3 if r.status == "ok" and r.seconds is not None]
    if w3:
        largest = max(w3, key=lambda r: r.clients)
        if largest.peak_rss_mib is not None:
            out.append(
                _target(
                    f"W3: fedmoe peak RSS at {largest.clients:,} clients <= 8 GiB (GiB)",
                    largest.peak_rss_mib / GIB,
                    largest.peak_rss_mib <= 8 * GIB,
                )
            )
        per = [1000 * (r.seconds or 0.0) / r.participants for r in w3]
        growth = per[-1] / min(per)
        out.append(
            _target(
                "W3: fedmoe time/participant at the largest population <= 1.25x the "
                "smallest seen (linear rounds)",
                growth,
                growth <= 1.25,
            )
        )
    return out


def _target(name: str, value: float, met: bool) -> dict[str, object]:
    return {"target": name, "value": value, "met": met}


def machine(threads: int) -> dict[str, object]:
    """The machine line: CPU, cores, memory, library versions, threads."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {}
    for pkg in ("torch", "numpy", "flwr", "ray", "pfl"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "threads": threads,
        "versions": versions,
    }


def machine_line(m: dict[str, object]) -> str:
    v = m["versions"]
    assert isinstance(v, dict)
    libs = ", ".join(f"{k} {val}" for k, val in v.items())
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Python {m['python']}; "
        f"{libs}; {threads_text(m['threads'])} for every contender; "
        f"load average {m['load_average']} at the start"
    )


def threads_text(n: object) -> str:
    return f"{n} thread{'' if n == 1 else 's'}"


def _seconds(s: float) -> str:
    """Three significant digits without exponent or trailing dot."""
    decimals = 0 if s >= 100 else 1 if s >= 10 else 2 if s >= 1 else 3
    return f"{s:.{decimals}f}"


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table(rows: list[Row]) -> str:
    """A markdown table, aligned so it reads in a terminal too."""
    head = [
        "workload",
        "contender",
        "samples/s",
        "seconds",
        "peak RSS (MiB)",
        "ratio",
        "GFLOP/s",
        "% peak",
        "notes",
    ]
    body = [
        [
            r.label,
            r.contender,
            _fmt(r.samples_per_s, ",.0f"),
            "-" if r.seconds is None else _seconds(r.seconds),
            _fmt(r.peak_rss_mib, ",.0f"),
            _fmt(r.ratio, ".2f", "x"),
            _fmt(r.gflops, ".2f"),
            _fmt(None if r.peak_fraction is None else 100 * r.peak_fraction, ".1f"),
            "; ".join(([r.status] if r.status != "ok" else []) + r.notes),
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    right = {2, 3, 4, 5, 6, 7}

    def line(cells: list[str]) -> str:
        padded = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(head), rule, *(line(b) for b in body)])


def targets_text(targets: list[dict[str, object]]) -> str:
    lines = []
    for t in targets:
        value = t["value"]
        assert isinstance(value, float)
        mark = "met" if t["met"] else "NOT met"
        lines.append(f"- {t['target']}: {value:.3g} ({mark})")
    return "\n".join(lines)
