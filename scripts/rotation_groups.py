"""Per rotation group: each method's accuracy in a run with ``partition.rotations > 1``.

    python scripts/rotation_groups.py RESULTS.json [METHOD...]

Client ``k`` is in group ``k mod R`` (images turned by ``(k mod R) * 360 / R`` degrees;
see ``fedmoe.experiment.rotation``). Prints one markdown table: each method's mean
local-test and global-test accuracy (%) over each group's clients, the mean specialist
weight of a gate method on local and global test, and, for IFCA, how many of each
group's clients chose each cluster model. Without METHODs, every method of the run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fedmoe.experiment.rotation import turns


def _array(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _groups(values: list[float | None], rotations: int) -> list[float]:
    """The mean of ``values`` (one per client) over each group's clients."""
    x = _array(values)
    return [float(np.nanmean(x[g::rotations])) for g in range(rotations)]


def _row(name: str, method: dict[str, Any], rotations: int) -> str:
    cells = [
        f"{100 * v:.2f}"
        for split in ("local_test", "global_test")
        for v in _groups(method[split]["per_client"], rotations)
    ]
    gate = method.get("gate")
    weights = "-"
    if gate is not None:
        weights = " / ".join(
            f"{np.nanmean(_array(gate[s]['all'])):.2f}" for s in ("local_test", "global_test")
        )
    clusters = "-"
    details = method.get("details") or {}
    if "model_of_client" in details:
        chosen = np.array(details["model_of_client"])
        clusters = "; ".join(
            ",".join(
                str(int(c)) for c in np.bincount(chosen[g::rotations], minlength=details["models"])
            )
            for g in range(rotations)
        )
    return f"| {name} | " + " | ".join(cells) + f" | {weights} | {clusters} |"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    path = Path(argv[0])
    try:
        results = json.loads(path.read_text())
        rotations = int(results["config"]["partition"]["rotations"])
        methods: dict[str, Any] = results["methods"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"{path}: not a fedmoe results.json with partition.rotations ({e})", file=sys.stderr)
        return 1
    if rotations < 2:
        print(f"{path}: partition.rotations = {rotations}, no groups to compare", file=sys.stderr)
        return 1
    names = argv[1:] or list(methods)
    unknown = [n for n in names if n not in methods]
    if unknown:
        print(f"{path}: no method {', '.join(unknown)} (has {', '.join(methods)})", file=sys.stderr)
        return 1
    degrees = [90 * turns(g, rotations) for g in range(rotations)]
    head = [f"local {d}°" for d in degrees] + [f"global, clients of {d}°" for d in degrees]
    print(
        "| method | "
        + " | ".join(head)
        + " | specialist weight local / global | clients per cluster model, by group |"
    )
    print("|---|" + "---:|" * len(head) + "---:|---|")
    for name in names:
        print(_row(methods[name]["label"], methods[name], rotations))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
