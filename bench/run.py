"""Benchmark fedmoe's engine against a per-client PyTorch loop, Flower and pfl.

    python bench/run.py --quick            # the table in a few minutes
    python bench/run.py --quick --json     # the same as JSON
    python bench/run.py                    # the full run; writes BENCHMARKS.md

Every contender x workload runs in its own process, one after another, with the same
thread settings; see docs/benchmarks.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.plan import CONTENDERS, Planned, make_plan  # noqa: E402
from bench.runner import ChildResult, run_child, run_json  # noqa: E402
from bench.workloads import WORKLOADS  # noqa: E402

QUICK_TIMEOUT_S = 150.0
FULL_TIMEOUT_S = 3600.0
#: --quick must print its table within 5 minutes: jobs that would start after this many
#: seconds are reported as not run, and a running job is stopped when it is spent.
QUICK_BUDGET_S = 280.0


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="Benchmark fedmoe's engine against the systems users would otherwise pick.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="scaled-down run (under 5 minutes on 2 cores); says what it scaled",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--workloads",
        type=_csv,
        default=list(WORKLOADS),
        help=f"comma-separated subset of {','.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--contenders",
        type=_csv,
        default=list(CONTENDERS),
        help=f"comma-separated subset of {','.join(CONTENDERS)}",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="intra-op threads for every contender (default: all cores)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the markdown report here (the full run defaults to "
        "BENCHMARKS.md in the repository root)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds allowed per contender x workload "
        f"(default {QUICK_TIMEOUT_S:g} quick, {FULL_TIMEOUT_S:g} full)",
    )
    ns = parser.parse_args(argv)
    if ns.threads < 1:
        parser.error("--threads must be at least 1")
    if ns.out is None and not ns.quick:
        ns.out = ROOT / "BENCHMARKS.md"
    return ns


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    try:
        plan, scaled = make_plan(ns.workloads, ns.contenders, ns.threads, ns.quick)
    except ValueError as exc:
        _log(f"error: {exc}")
        return 2
    started = datetime.datetime.now(datetime.UTC)
    machine = report.machine(ns.threads)
    if os.getloadavg()[0] > 0.25 * (os.cpu_count() or 1):
        _log(
            f"warning: load average {os.getloadavg()[0]:.1f}: other jobs are running, "
            "numbers will be noisy (multi-threaded contenders suffer most)"
        )
    deadline = time.monotonic() + QUICK_BUDGET_S if ns.quick else math.inf
    _log(f"measuring the fp32 matmul peak with {report.threads_text(ns.threads)}")
    peak = run_json(["-m", "bench.flops", f"--threads={ns.threads}"], ns.threads, 300)
    peak_flops = report.number(peak["flops_per_s"])
    timeout = ns.timeout or (QUICK_TIMEOUT_S if ns.quick else FULL_TIMEOUT_S)
    results = _run_all(plan, ns.threads, timeout, deadline)
    rows = report.make_rows(results, peak_flops)
    targets = report.check_targets(rows)
    doc = {
        "date": started.isoformat(timespec="seconds"),
        "quick": ns.quick,
        "command": _command(argv),
        "machine": machine,
        "matmul_peak": peak,
        "scaled": scaled,
        "rows": [dataclasses.asdict(r) for r in rows],
        "targets": targets,
        "children": [_shown(c.command, ns.threads) for _, c in results],
    }
    if ns.json:
        print(json.dumps(doc, indent=2))
    else:
        print(_summary(doc, rows, targets))
    if ns.out is not None:
        ns.out.write_text(_markdown(doc, rows, targets))
        _log(f"wrote {ns.out}")
    return 0


def _run_all(
    plan: list[Planned], threads: int, timeout: float, deadline: float
) -> list[tuple[Planned, ChildResult]]:
    """Run the jobs one after another; those that would start past ``deadline`` are
    reported as not run."""
    results: list[tuple[Planned, ChildResult]] = []
    for i, planned in enumerate(plan, 1):
        args = ["-m", planned.module, *planned.job.argv()]
        name = f"[{i}/{len(plan)}] {planned.label} {planned.contender}"
        left = deadline - time.monotonic()
        if left < 5:
            reason = f"--quick's {QUICK_BUDGET_S:.0f} s budget was spent (busy machine?)"
            _log(f"{name}: not run, {reason}")
            results.append((planned, ChildResult.skipped(args, reason)))
            continue
        _log(f"{name} ...")
        child = run_child(args, threads, min(timeout, left))
        if child.record is None:
            _log(f"  no result ({'timed out' if child.timed_out else 'failed'}):")
            _log(child.output_tail)
        else:
            _log(f"  done in {child.wall_seconds:.1f} s")
        results.append((planned, child))
    return results


def _shown(command: list[str], threads: int) -> str:
    env = f"OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
    return " ".join([env, "python", *(shlex.quote(a) for a in command[1:])])


def _command(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python bench/run.py", *(shlex.quote(a) for a in args)])


def _peak_line(doc: dict[str, object], rows: list[report.Row]) -> str:
    peak = doc["matmul_peak"]
    assert isinstance(peak, dict)
    line = (
        f"fp32 matmul peak: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s "
        f"(torch.mm {peak['n']}x{peak['n']}, best of 7, {report.threads_text(peak['threads'])})"
    )
    fractions = [
        f"{r.label} {100 * r.peak_fraction:.1f}%"
        for r in rows
        if r.contender == "fedmoe" and r.peak_fraction is not None
    ]
    if fractions:
        line += "; fedmoe achieves " + ", ".join(fractions) + " of it"
    return line


def _summary(
    doc: dict[str, object], rows: list[report.Row], targets: list[dict[str, object]]
) -> str:
    machine = doc["machine"]
    assert isinstance(machine, dict)
    parts = [f"Machine: {report.machine_line(machine)}", _peak_line(doc, rows)]
    scaled = doc["scaled"]
    assert isinstance(scaled, list)
    if scaled:
        parts.append("Scaled down (--quick): " + "; ".join(scaled))
    parts += ["", report.table(rows), "", "Targets:", report.targets_text(targets)]
    return "\n".join(parts)


def _markdown(
    doc: dict[str, object], rows: list[report.Row], targets: list[dict[str, object]]
) -> str:
    machine = doc["machine"]
    assert isinstance(machine, dict)
    scaled = doc["scaled"]
    assert isinstance(scaled, list)
    children = doc["children"]
    assert isinstance(children, list)
    lines = [
        "# Benchmarks",
        "",
        f"Date: {doc['date']}  ",
        f"Machine: {report.machine_line(machine)}  ",
        f"{_peak_line(doc, rows)}",
        "",
        "Command:",
        "",
        "```sh",
        str(doc["command"]),
        "```",
        "",
    ]
    if scaled:
        lines += ["Scaled down: " + "; ".join(scaled), ""]
    lines += [
        "samples/s: training examples (forward + backward) per second of the timed region "
        "(training only: no data loading, process start or warm-up step). "
        "ratio: fedmoe's samples/s over the contender's on the same workload. "
        "GFLOP/s from analytic FLOP counts (training = 3x forward). "
        "peak RSS: the contender's process tree. See docs/benchmarks.md.",
        "",
        report.table(rows),
        "",
        "## Targets",
        "",
        report.targets_text(targets),
        "",
        "## Commands of each contender x workload",
        "",
        "```sh",
        *children,
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
