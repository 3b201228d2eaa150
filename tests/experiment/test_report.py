"""`fedmoe report`: tables with the right numbers, the plots that apply, one-line errors."""

from __future__ import annotations

import csv
import itertools
import json
import math
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedmoe.errors import FedmoeError
from fedmoe.experiment.plots import METHOD_LABELS
from fedmoe.experiment.report import (
    ReportError,
    ablation_table,
    accuracy,
    gate_means,
    read_sweep,
    write_report,
)

METHODS = ("fedavg", "local", "finetune", "moe")
PNG = b"\x89PNG\r\n\x1a\n"
HEADER_TAIL = [
    "seed",
    "method",
    "local_test_acc",
    "global_test_acc",
    "local_test_std",
    "global_test_std",
    "run",
]
PATHS = {"p": "partition.p", "opt_out": "partition.opt_out"}


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _accuracies(cell: dict[str, str], seed: int, method: int) -> tuple[list[float], list[float]]:
    """Per-client local- and global-test accuracies: distinct per cell, seed and method
    (the MoE best on local test everywhere), varied across seeds."""
    shift = sum((_number(v) or 0.3) * (i + 1) for i, v in enumerate(cell.values()))
    base = 0.3 + 0.1 * method + 0.05 * shift + 0.013 * seed * (method + 1)
    local = [round(base + d, 6) for d in (-0.04, 0.0, 0.01, 0.03)]
    glob = [round(0.9 - base / 2 + d, 6) for d in (-0.01, 0.0, 0.0, 0.01)]
    return local, glob


def _results(cell: dict[str, str], seed: int) -> dict[str, Any]:
    """A minimal results.json: the keys the report reads."""
    config: dict[str, Any] = {
        "dataset": "fashion-mnist",
        "seed": seed,
        "partition": {"scheme": "majority", "clients": 4, "p": 0.8, "opt_out": 0.0},
        "personalise": {"pool": "probability"},
    }
    for key, text in cell.items():
        *parents, leaf = PATHS.get(key, key).split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _number(text) if _number(text) is not None else text
    methods = {}
    for i, m in enumerate(METHODS):
        local, glob = _accuracies(cell, seed, i)
        methods[m] = {"local_test": {"per_client": local}, "global_test": {"per_client": glob}}
    p = _number(cell.get("p", "0.8")) or 0.0
    other: list[float | None] = [0.5 + 0.01 * seed, 0.4, None, 0.45]
    if p == 1.0:  # clients without other classes
        other = [None, None, None, None]
    gate = {"majority": [0.9 - 0.01 * seed, 0.8, 0.85, None], "other": other}
    return {
        "config": config,
        "dataset": {"name": "fashion-mnist", "model": "fmnist-cnn", "model_params": 22180},
        "methods": methods,
        "gate": {"local_test": gate},
    }


def make_sweep(root: Path, grid: dict[str, list[str]], seeds: list[int]) -> Path:
    """A sweep directory over the product of ``grid``; returns it."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [["cell", *grid, *HEADER_TAIL]]
    for values in itertools.product(*grid.values()):
        cell = dict(zip(grid, values, strict=True))
        name = ",".join(f"{k}={v}" for k, v in cell.items()) or "base"
        for seed in seeds:
            run = f"runs/{name}-s{seed}"
            (root / run).mkdir(parents=True)
            results = _results(cell, seed)
            (root / run / "results.json").write_text(json.dumps(results))
            for m in METHODS:
                local = results["methods"][m]["local_test"]["per_client"]
                glob = results["methods"][m]["global_test"]["per_client"]
                rows.append([
                    name, *values, str(seed), m,
                    repr(statistics.fmean(local)), repr(statistics.fmean(glob)),
                    repr(statistics.pstdev(local)), repr(statistics.pstdev(glob)), run,
                ])  # fmt: skip
    with (root / "sweep.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def expected_rows(root: Path, keys: list[str], split: str) -> list[str]:
    """The table rows the report should show, computed from sweep.csv."""
    with (root / "sweep.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    lines = []
    for cell in cells:
        own = [r for r in rows if r["cell"] == cell]
        entries, means = [], []
        for m in METHODS:
            values = [float(r[f"{split}_test_acc"]) for r in own if r["method"] == m]
            mean = 100 * statistics.fmean(values)
            means.append(round(mean, 1))
            if len(values) > 1:
                entries.append(f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}")
            else:
                entries.append(f"{mean:.1f}")
        entries = [
            f"**{e}**" if m == max(means) else e for e, m in zip(entries, means, strict=True)
        ]
        seeds = len({r["seed"] for r in own})
        grid = [own[0][k] for k in keys] or [cell]
        lines.append("| " + " | ".join([*grid, str(seeds), *entries]) + " |")
    return lines


def check_report(root: Path, keys: list[str], plots: set[str]) -> str:
    report = write_report(root)
    assert report == root / "report.md"
    text = report.read_text()
    for split in ("local", "global"):
        for line in expected_rows(root, keys, split):
            assert line in text, line
    assert {p.name for p in (root / "plots").iterdir()} == plots
    for name in plots:
        assert (root / "plots" / name).read_bytes().startswith(PNG)
        assert f"](plots/{name})" in text
    for label in ("FedAvg", "Local", "FT", "MoE"):
        assert f" {label} |" in text
    return text


def test_p_grid(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.2", "0.8", "1.0"]}, [0, 1, 2])
    text = check_report(
        root,
        ["p"],
        {"accuracy_vs_p.png", "local_vs_global.png", "client_accuracy.png", "gate.png"},
    )
    assert "`p` ∈ {0.2, 0.8, 1.0}" in text
    assert "Seeds: 0, 1, 2" in text
    assert "Accuracy vs opt_out: `opt_out` is not a grid key" in text
    assert "besides the grid and the seed: none" in text


def test_p_by_opt_out_grid(tmp_path: Path) -> None:
    grid = {"p": ["0.5", "1.0"], "opt_out": ["0.0", "0.5"]}
    root = make_sweep(tmp_path / "s", grid, [0, 1])
    text = check_report(
        root,
        ["p", "opt_out"],
        {
            "accuracy_vs_p.png",
            "accuracy_vs_opt_out.png",
            "local_vs_global.png",
            "client_accuracy.png",
            "gate.png",
        },
    )
    assert "Not plotted" not in text
    assert "line styles: opt_out=0.0, opt_out=0.5" in text


def test_single_cell(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.8"]}, [3])
    text = check_report(root, ["p"], {"local_vs_global.png", "client_accuracy.png", "gate.png"})
    rows = [line for line in text.splitlines() if line.startswith("| 0.8 | 1 |")]
    assert len(rows) == 2 and "±" not in "".join(rows)
    assert "Accuracy vs p: `p` has a single value (0.8)" in text


def test_no_grid_keys(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", {}, [0, 1])
    text = check_report(root, [], {"local_vs_global.png", "client_accuracy.png", "gate.png"})
    assert "| cell | seeds | FedAvg | Local | FT | MoE |" in text
    assert "Grid: none (a single cell)" in text


def test_many_combinations_split_into_several_figures(tmp_path: Path) -> None:
    grid = {"p": ["0.5", "1.0"], "opt_out": ["0.0", "0.1", "0.2", "0.3", "0.4"]}
    root = make_sweep(tmp_path / "s", grid, [0])
    stems = ("accuracy_vs_p", "local_vs_global", "client_accuracy", "gate")
    text = check_report(
        root,
        ["p", "opt_out"],
        {f"{s}-{i}.png" for s in stems for i in (1, 2)} | {"accuracy_vs_opt_out.png"},
    )
    assert "### Accuracy vs p (2/2)" in text


def test_text_grid_key_splits_panels_and_is_not_plotted_against(tmp_path: Path) -> None:
    grid = {"p": ["0.2", "0.8"], "personalise.pool": ["log-linear", "probability"]}
    root = make_sweep(tmp_path / "s", grid, [0, 1])
    text = check_report(
        root,
        ["p", "personalise.pool"],
        {"accuracy_vs_p.png", "local_vs_global.png", "client_accuracy.png", "gate.png"},
    )
    assert "Accuracy vs personalise.pool: `personalise.pool` values are not numbers" in text


def test_gate_means_skip_missing_clients() -> None:
    results = {"gate": {"local_test": {"majority": [0.5, None, 0.7], "other": [None]}}}
    means = gate_means(results)
    assert means is not None
    assert means[0] == pytest.approx(0.6) and math.isnan(means[1])
    assert gate_means({"methods": {}}) is None


def test_method_labels_match_the_protocol() -> None:
    from fedmoe.experiment.protocol import METHOD_LABELS as PROTOCOL_LABELS

    assert METHOD_LABELS == PROTOCOL_LABELS


def _edit_csv(line: int, column: str, value: str) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        with (root / "sweep.csv").open(newline="") as f:
            rows = list(csv.reader(f))
        rows[line - 1][rows[0].index(column)] = value
        with (root / "sweep.csv").open("w", newline="") as f:
            csv.writer(f).writerows(rows)

    return edit


def _rewrite(name: str, change: Callable[[str], str]) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        path = root / name
        path.write_text(change(path.read_text()))

    return edit


def _edit_results(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        path = root / "runs/p=0.2-s0/results.json"
        results = json.loads(path.read_text())
        change(results)
        path.write_text(json.dumps(results))

    return edit


def _drop_line(n: int) -> Callable[[str], str]:
    return lambda text: "\n".join(t for i, t in enumerate(text.splitlines()) if i != n - 1)


BAD: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "no sweep.csv": (lambda r: (r / "sweep.csv").unlink(), "sweep.csv", "not found"),
    "empty": (_rewrite("sweep.csv", lambda t: ""), "sweep.csv", "empty file"),
    "header only": (_rewrite("sweep.csv", lambda t: t.splitlines()[0]), "sweep.csv", "no rows"),
    "missing column": (
        _rewrite("sweep.csv", lambda t: t.replace(",global_test_acc,", ",global_acc,", 1)),
        "sweep.csv",
        "missing column(s) global_test_acc",
    ),
    "seed before cell": (
        _rewrite("sweep.csv", lambda t: t.replace("cell,p,seed", "p,cell,seed", 1)),
        "sweep.csv",
        "columns must be",
    ),
    "non-numeric accuracy": (
        _edit_csv(3, "local_test_acc", "abc"),
        "sweep.csv: line 3",
        "local_test_acc is 'abc'",
    ),
    "accuracy above 1": (
        _edit_csv(2, "global_test_acc", "1.5"),
        "sweep.csv: line 2",
        "not a number in [0, 1]",
    ),
    "negative std": (_edit_csv(2, "local_test_std", "-1"), "line 2", "local_test_std"),
    "seed not an integer": (_edit_csv(2, "seed", "0.5"), "line 2", "not an integer"),
    "short row": (
        _rewrite("sweep.csv", lambda t: t.replace(",runs/p=0.2-s0\n", "\n", 1)),
        "sweep.csv: line 2",
        "8 fields, the header has 9",
    ),
    "repeated row": (
        _rewrite("sweep.csv", lambda t: t + t.splitlines()[1] + "\n"),
        "sweep.csv",
        "repeats line 2",
    ),
    "missing run directory": (
        lambda r: shutil.rmtree(r / "runs/p=0.2-s1"),
        "sweep.csv",
        "runs/p=0.2-s1 does not exist",
    ),
    "missing results.json": (
        lambda r: (r / "runs/p=0.2-s1/results.json").unlink(),
        "results.json",
        "not found",
    ),
    "bad json": (
        _rewrite("runs/p=0.2-s0/results.json", lambda t: t[:-5]),
        "runs/p=0.2-s0/results.json",
        "not valid JSON",
    ),
    "method missing in run": (
        _edit_results(lambda r: r["methods"].pop("moe")),
        "results.json",
        "methods.moe.local_test.per_client is missing",
    ),
    "stale csv": (
        _edit_csv(2, "local_test_acc", "0.99"),
        "sweep.csv: line 2",
        "disagrees with",
    ),
    "config contradicts grid": (
        _edit_results(lambda r: r["config"]["partition"].update(p=0.5)),
        "results.json",
        "config partition.p is 0.5 but sweep.csv line 2 says p=0.2",
    ),
    "header dropped": (
        _rewrite("sweep.csv", _drop_line(1)),
        "sweep.csv",
        "missing column(s)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_error(tmp_path: Path, case: str) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.2", "0.8"]}, [0, 1])
    read_sweep(root)
    edit, where, what = BAD[case]
    edit(root)
    with pytest.raises(ReportError) as info:
        write_report(root)
    message = str(info.value)
    assert isinstance(info.value, FedmoeError)
    assert "\n" not in message
    assert where in message and what in message, message
    assert not (root / "report.md").exists() and not (root / "plots").exists()


def test_directory_without_sweep(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"sweep\.csv: not found"):
        write_report(tmp_path / "nowhere")


def test_ablation_table_lists_each_gate_variant_per_cell(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.5", "1.0"]}, [0, 1])
    for run in sorted((root / "runs").iterdir()):
        results = json.loads((run / "results.json").read_text())
        p, seed = results["config"]["partition"]["p"], results["config"]["seed"]
        results["ablation"] = {
            "best": {"local_test": {"mean": 0.8 + 0.1 * p + 0.01 * seed},
                     "global_test": {"mean": 0.7}},
            "worse": {"local_test": {"mean": 0.5}, "global_test": {"mean": 0.6 + 0.02 * seed}},
        }  # fmt: skip
        (run / "results.json").write_text(json.dumps(results))
    sweep = read_sweep(root)
    table = ablation_table(sweep, "local_test").splitlines()
    assert table[2:4] == [
        "| best | **85.5 ± 0.7** | **90.5 ± 0.7** |",
        "| worse | 50.0 ± 0.0 | 50.0 ± 0.0 |",
    ]
    # Then the paper's MoE from the same runs (sweep.csv's rows).
    moe = [accuracy(c, "moe", "local") for c in sweep.cells]
    assert table[4:] == [
        "| paper MoE, joint schedule (`moe`) | "
        + " | ".join(f"{100 * s.mean:.1f} ± {100 * s.std:.1f}" for s in moe)
        + " |"
    ]
    assert ablation_table(sweep, "global_test").splitlines()[3] == (
        "| worse | 61.0 ± 1.4 | 61.0 ± 1.4 |"
    )
    assert "## MoE+ ablation" in write_report(root).read_text()
    assert ablation_table(read_sweep(make_sweep(tmp_path / "t", {"p": ["0.5"]}, [0])), "x") == ""


def test_setup_lists_config_keys_that_differ_with_missing_keys_at_their_default(
    tmp_path: Path,
) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.5", "1.0"]}, [0])
    runs = sorted((root / "runs").iterdir())

    def edit(run: Path, section: str, values: dict[str, Any]) -> None:
        results = json.loads((run / "results.json").read_text())
        results["config"][section] = values
        (run / "results.json").write_text(json.dumps(results))

    # Written by an older fedmoe without the section vs the section at its defaults.
    edit(runs[0], "moe_plus", {"enabled": False})
    setup = [
        line
        for line in write_report(root).read_text().splitlines()
        if line.startswith("- Config entries")
    ]
    assert setup == [
        "- Config entries that differ between runs besides the grid and the seed: none"
    ]
    edit(runs[1], "moe_plus", {"enabled": True})
    assert "`moe_plus.enabled`" in write_report(root).read_text()


def test_moe_plus_gets_its_own_gate_plot(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.5", "0.8"]}, [0, 1])
    with (root / "sweep.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    method = rows[0].index("method")
    rows += [[*r[:method], "moe-plus", *r[method + 1 :]] for r in rows[1:] if r[method] == "moe"]
    with (root / "sweep.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    for run in (root / "runs").iterdir():
        results = json.loads((run / "results.json").read_text())
        results["methods"]["moe-plus"] = results["methods"]["moe"]
        results["gate_plus"] = {"local_test": {"majority": [0.9], "other": [0.2]}}
        (run / "results.json").write_text(json.dumps(results))
    text = write_report(root).read_text()
    assert "### MoE+ gate weight on the specialist" in text
    assert (root / "plots" / "gate_plus.png").read_bytes().startswith(PNG)
    assert gate_means(json.loads((run / "results.json").read_text()), "gate_plus") == (0.9, 0.2)


def test_paired_differences_are_per_seed_differences_of_the_same_runs(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.5", "1.0"]}, [0, 1, 2])
    with (root / "sweep.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    # Seed 2's MoE falls behind FT at p = 0.5 (in sweep.csv and its results.json): the
    # count of seeds ahead must say so.
    key = ("p=0.5", "2")
    (moe,) = [r for r in rows if (r["cell"], r["seed"], r["method"]) == (*key, "moe")]
    (ft,) = [r for r in rows if (r["cell"], r["seed"], r["method"]) == (*key, "finetune")]
    delta = float(moe["local_test_acc"]) - float(ft["local_test_acc"]) + 0.05
    moe["local_test_acc"] = repr(float(moe["local_test_acc"]) - delta)
    results_path = root / moe["run"] / "results.json"
    results = json.loads(results_path.read_text())
    local = results["methods"]["moe"]["local_test"]
    local["per_client"] = [v - delta for v in local["per_client"]]
    results_path.write_text(json.dumps(results))
    with (root / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def acc(cell: str, seed: int, method: str, split: str) -> float:
        (row,) = [
            r for r in rows if (r["cell"], r["seed"], r["method"]) == (cell, str(seed), method)
        ]
        return float(row[f"{split}_test_acc"])

    text = write_report(root).read_text()
    assert "| p | MoE - FT | MoE - Local |" in text
    assert "| p | MoE - FedAvg | MoE - FT |" in text
    ahead_of: dict[tuple[str, str, str], int] = {}
    for cell, p in (("p=0.5", "0.5"), ("p=1.0", "1.0")):
        for split, baselines in (
            ("local", ("finetune", "local")),
            ("global", ("fedavg", "finetune")),
        ):
            entries = []
            for b in baselines:
                diffs = [
                    100 * (acc(cell, s, "moe", split) - acc(cell, s, b, split)) for s in range(3)
                ]
                ahead = ahead_of[cell, split, b] = sum(d > 0 for d in diffs)
                entries.append(
                    f"{statistics.fmean(diffs):+.2f} ± {statistics.stdev(diffs):.2f} ({ahead}/3)"
                )
            assert f"| {p} | {entries[0]} | {entries[1]} |" in text, (split, entries)
    assert ahead_of["p=0.5", "local", "finetune"] == 2
    assert ahead_of["p=1.0", "local", "finetune"] == 3


def test_setup_sums_the_runs_timing(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.5", "1.0"]}, [0, 1])

    def run_time() -> list[str]:
        text = write_report(root).read_text()
        return [line for line in text.splitlines() if line.startswith("- Run time")]

    assert run_time() == []  # no run recorded its timing
    for i, run in enumerate(sorted((root / "runs").iterdir())):
        results = json.loads((run / "results.json").read_text())
        results["timing_s"] = {"federate": 600.0 * (i + 1), "evaluate": 300.0}
        results["threads"] = 1
        (run / "results.json").write_text(json.dumps(results))
    # 900 + 1500 + 2100 + 2700 s = 2 h; 15-45 min each.
    assert run_time() == [
        "- Run time: 2.0 h over 4 run(s), 15.0-45.0 min each (wall time: the sum of the "
        "phases' `timing_s` in results.json, including any time the process was paused; "
        "a resumed run counts only its last process); "
        "torch threads 1"
    ]
