"""Merge finished runs of one experiment whose method list was split over processes.

Every random stream is keyed by (seed, client, phase), so a method's entry does not
depend on which other methods share its run: running ``methods = [a, b]`` in one process
and ``[c, d]`` in another gives the entries of ``[a, b, c, d]``. This script checks that
the runs' configs agree on everything but ``methods`` and the ``[method.*]`` sections,
that a method present in several runs has the same entry in each, and writes one run
directory with every method (in the order the runs list them), the runs' timing
combined (``evaluate`` summed) and ``merged_from`` naming the runs.

    python scripts/merge_runs.py OUT RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from fedmoe.experiment.results import write_results

SPLIT_KEYS = ("methods", "method")


def _load(run: Path) -> dict[str, Any]:
    path = run / "results.json"
    if not path.is_file():
        raise SystemExit(f"merge_runs: {run}: no results.json (not a finished run)")
    return dict(json.loads(path.read_text()))


def _rest(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in SPLIT_KEYS}


def merge(runs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """One results dict from ``runs`` (their directories' ``names`` for messages)."""
    first = runs[0]
    methods: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    timing: dict[str, float] = {}
    for name, res in zip(names, runs, strict=True):
        if _rest(res["config"]) != _rest(first["config"]):
            raise SystemExit(f"merge_runs: {name}: its config differs from {names[0]}'s")
        if res["partition"] != first["partition"]:
            raise SystemExit(f"merge_runs: {name}: its partition differs from {names[0]}'s")
        for method, entry in res["methods"].items():
            # Timing is per run; everything else in an entry must agree.
            if method in methods and _untimed(methods[method]) != _untimed(entry):
                raise SystemExit(f"merge_runs: {name}: {method}'s entry differs from before")
            methods.setdefault(method, entry)
        sections.update(res["config"].get("method", {}))
        for phase, seconds in res["timing_s"].items():
            timing[phase] = _combine(phase, timing.get(phase), seconds)
    config = dict(first["config"], methods=list(methods), method=sections)
    return dict(first, config=config, methods=methods, timing_s=timing, merged_from=names)


def _combine(phase: str, before: float | None, seconds: float) -> float:
    """Evaluation time adds up over the runs (each evaluated its own methods); a method
    or ``prepare`` counts once, as the run that computed it (a stage restored from a
    copied checkpoint takes ~0 s)."""
    if before is None:
        return seconds
    return round(before + seconds, 3) if phase == "evaluate" else max(before, seconds)


def _untimed(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "timing_s"}


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        raise SystemExit(__doc__)
    out, dirs = Path(argv[1]), [Path(a) for a in argv[2:]]
    merged = merge([_load(d) for d in dirs], [str(d) for d in dirs])
    write_results(merged, out)
    print(f"{out}: {len(merged['methods'])} methods from {len(dirs)} runs")


if __name__ == "__main__":
    main(sys.argv)
