"""Time whole `fedmoe run`s phase by phase, one variant after another on the same machine,
and check that the variants give the same results.

    python bench/run_phases.py --preset quick --variant "--threads 2 --workers 1" \
        --variant "--threads 2 --workers 2" [--set key=value ...] [--out DIR] [--busy N] \
        [--before DIR]

Each variant runs `fedmoe run --preset P --quiet --out DIR/<i>` in its own process. The
table has the wall time of each run (process start to exit) and its `timing_s` phases
(prepare, each method's federated phase and personalisation, evaluate), in seconds, and
the ratio of each variant's wall time to the first's. Results (every method's entry)
must be equal across variants, or the script says which differ and exits 1; with
``--differ`` (variants that change the arithmetic, ``--set dtype=bf16-mixed``, say) it
prints each method's local- and global-test accuracy per variant instead. ``--before DIR``
runs the first variant with the package of an older checkout (``git worktree add DIR REV``)
first on ``PYTHONPATH``, to time today's code against an older commit's.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SPLITS = ("local_test", "global_test")


def _run(
    preset: str, sets: list[str], variant: str, out: Path, source: Path | None = None
) -> tuple[float, dict[str, Any]]:
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "fedmoe", "run", "--preset", preset, "--quiet", "--out", str(out)]
    for item in sets:
        cmd += ["--set", item]
    cmd += shlex.split(variant)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - start
    return wall, json.loads((out / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-phases"))
    parser.add_argument("--differ", action="store_true", help="variants may change results")
    parser.add_argument(
        "--before", type=Path, help="an older checkout whose code runs the first variant"
    )
    parser.add_argument(
        "--busy", type=int, default=0, help="single-threaded busy processes beside every run"
    )
    args = parser.parse_args()
    if args.before is not None and not (args.before / "src" / "fedmoe").is_dir():
        sys.exit(f"run_phases: {args.before} is not a fedmoe checkout (no src/fedmoe)")
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"run_phases: {args.out} is not empty; choose another --out")
    rows = []
    spin = [sys.executable, "-c", "while True: pass"]
    busy = [subprocess.Popen(spin) for _ in range(args.busy)]
    try:
        for i, variant in enumerate(args.variant):
            source = args.before / "src" if args.before is not None and i == 0 else None
            wall, results = _run(args.preset, args.sets, variant, args.out / str(i), source)
            label = f"{variant} (code in {args.before})" if source is not None else variant
            rows.append((label, wall, results))
            print(f"{label}: {wall:.1f} s", file=sys.stderr)
    finally:
        for proc in busy:
            proc.kill()
    phases = list(rows[0][2]["timing_s"])
    print(f"preset `{args.preset}` {' '.join('--set ' + s for s in args.sets)}; "
          f"{args.busy} busy process(es) beside each run; "
          f"load average at the end {os.getloadavg()[0]:.2f}\n")  # fmt: skip
    print("| variant | wall (s) | ratio | " + " | ".join(phases) + " |")
    print("|---|---:|---:|" + "---:|" * len(phases))
    base = rows[0][1]
    for variant, wall, results in rows:
        cells = " | ".join(f"{results['timing_s'].get(p, 0.0):.1f}" for p in phases)
        print(f"| `{variant}` | {wall:.1f} | {base / wall:.2f}x | {cells} |")
    reference = rows[0][2]["methods"]
    differ = [v for v, _, r in rows[1:] if r["methods"] != reference]
    if args.differ:
        print("\nTest accuracy (%), local / global, per variant:\n")
        print("| method | " + " | ".join(f"`{v}`" for v, _, _ in rows) + " |")
        print("|---|" + "---:|" * len(rows))
        for name in reference:
            cells = [
                " / ".join(f"{100 * r['methods'][name][s]['mean']:.2f}" for s in SPLITS)
                for _, _, r in rows
            ]
            print(f"| {name} | " + " | ".join(cells) + " |")
        return
    if differ:
        sys.exit(f"run_phases: results differ from the first variant's for: {differ}")
    print("\nEvery variant gave the same results (every method's entry equal).")


if __name__ == "__main__":
    main()
