"""`fedmoe report`: tables with the right numbers, the plots that apply, one-line errors.

The synthetic sweeps here write results.json format 2 (docs/results-format.md): what
the report shows of a method comes from its entry alone.
"""

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
from fedmoe.report import write_report
from fedmoe.report.markdown import variants_table
from fedmoe.sweep.reader import ReportError, accuracy, diverged, gate_means, read_sweep

METHODS = ("fedavg", "local", "finetune", "moe")
LABELS = {"fedavg": "FedAvg", "local": "Local", "finetune": "FT", "moe": "MoE"}
BASELINES = {"local_test": ["finetune", "local"], "global_test": ["fedavg", "finetune"]}
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
PLOTS = {"local_vs_global.png", "frontier.png", "client_accuracy.png", "gate_moe.png"}


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


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "per_client": values,
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values),
        "min": min(values),
    }


def entry(
    name: str, local: list[float], glob: list[float], gate: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A method's format-2 entry (a mixture when ``gate`` is given)."""
    out: dict[str, Any] = {
        "label": LABELS.get(name, name),
        "description": f"the {name} method",
        "local_test": _summary(local),
        "global_test": _summary(glob),
        "epochs": None if name == "fedavg" else [3, 4, 5, 6],
    }
    if gate is not None:
        out["gate"] = {"local_test": gate, "global_test": gate}
        out["baselines"] = json.loads(json.dumps(BASELINES))
    if name == "fedavg":
        history = [{"round": 0, "clients": [0, 1], "val_loss": 1.0, "val_accuracy": 0.5,
                    "improved": True}]  # fmt: skip
        out["federation"] = {"best_round": 0, "rounds_run": 1, "history": history}
    return out


def _results(cell: dict[str, str], seed: int) -> dict[str, Any]:
    """A format-2 results.json with the keys the report reads."""
    config: dict[str, Any] = {
        "dataset": "fashion-mnist",
        "seed": seed,
        "methods": list(METHODS),
        "partition": {"scheme": "majority", "clients": 4, "p": 0.8, "opt_out": 0.0},
        "method": {"moe": {"pool": "probability"}},
    }
    for key, text in cell.items():
        *parents, leaf = PATHS.get(key, key).split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _number(text) if _number(text) is not None else text
    p = _number(cell.get("p", "0.8")) or 0.0
    other: list[float | None] = [0.5 + 0.01 * seed, 0.4, None, 0.45]
    if p == 1.0:  # clients without other classes
        other = [None, None, None, None]
    gate = {"majority": [0.9 - 0.01 * seed, 0.8, 0.85, None], "other": other}
    methods = {}
    for i, m in enumerate(METHODS):
        local, glob = _accuracies(cell, seed, i)
        methods[m] = entry(m, local, glob, gate if m == "moe" else None)
    return {
        "format": 2,
        "engine": "simulator",
        "config": config,
        "dataset": {"name": "fashion-mnist", "model": "fmnist-cnn", "model_params": 22180},
        "clients": [0, 1, 2, 3],
        "methods": methods,
    }


def _csv_row(
    name: str, values: Any, seed: int, method: str, m: dict[str, Any], run: str
) -> list[str]:
    local, glob = m["local_test"]["per_client"], m["global_test"]["per_client"]
    return [
        name, *values, str(seed), method,
        repr(statistics.fmean(local)), repr(statistics.fmean(glob)),
        repr(statistics.pstdev(local)), repr(statistics.pstdev(glob)), run,
    ]  # fmt: skip


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
                rows.append(_csv_row(name, values, seed, m, results["methods"][m], run))
    with (root / "sweep.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def add_method(root: Path, name: str, make: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Add the method ``name`` to every run of the sweep in ``root``: its entry is
    ``make(results)``, appended to the run's ``methods``, and its rows to sweep.csv."""
    with (root / "sweep.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    at = {c: header.index(c) for c in ("cell", "seed", "run")}
    first = {r[at["run"]]: r for r in rows[1:]}
    for run, row in first.items():
        path = root / run / "results.json"
        results = json.loads(path.read_text())
        results["methods"][name] = make(results)
        results["config"]["methods"].append(name)
        path.write_text(json.dumps(results))
        grid = row[at["cell"] + 1 : at["seed"]]
        rows.append(
            _csv_row(
                row[at["cell"]], grid, int(row[at["seed"]]), name, results["methods"][name], run
            )
        )
    with (root / "sweep.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def add_validation(root: Path, score: Callable[[str, str], float]) -> None:
    """Give every method of every run of the sweep in ``root`` validation scores: each
    client ``score(run directory name, method)``."""
    for run in (root / "runs").iterdir():
        path = run / "results.json"
        results = json.loads(path.read_text())
        for method, entry in results["methods"].items():
            mean = score(run.name, method)
            entry["val"] = {"per_client": [mean] * 4, "mean": mean, "std": 0.0, "min": mean}
        path.write_text(json.dumps(results))


def expected_rows(
    root: Path, keys: list[str], split: str, methods: tuple[str, ...] = METHODS
) -> list[str]:
    """The table rows the report should show, computed from sweep.csv."""
    with (root / "sweep.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    lines = []
    for cell in cells:
        own = [r for r in rows if r["cell"] == cell]
        entries, means = [], []
        for m in methods:
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
    for label in LABELS.values():
        assert f" {label} |" in text
    return text


def test_p_grid(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.2", "0.8", "1.0"]}, [0, 1, 2])
    text = check_report(
        root,
        ["p"],
        {"accuracy_vs_p.png", *PLOTS},
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
        {"accuracy_vs_p.png", "accuracy_vs_opt_out.png", *PLOTS},
    )
    assert "Not plotted" not in text
    assert "line styles: opt_out=0.0, opt_out=0.5" in text


def test_a_plot_an_earlier_report_wrote_and_this_one_does_not_is_removed(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.2", "0.8"]}, [0])
    write_report(root)
    (root / "plots" / "frontier-3.png").write_bytes(PNG)
    (root / "plots" / "notes.txt").write_text("kept: not a plot")
    write_report(root)
    assert {p.name for p in (root / "plots").iterdir()} == PLOTS | {
        "accuracy_vs_p.png",
        "notes.txt",
    }


def test_single_cell(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.8"]}, [3])
    text = check_report(root, ["p"], PLOTS)
    rows = [line for line in text.splitlines() if line.startswith("| 0.8 | 1 |")]
    assert len(rows) == 2 and "±" not in "".join(rows)
    assert "Accuracy vs p: `p` has a single value (0.8)" in text


def test_no_grid_keys(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", {}, [0, 1])
    text = check_report(root, [], PLOTS)
    assert "| cell | seeds | FedAvg | Local | FT | MoE |" in text
    assert "Grid: none (a single cell)" in text


def test_many_combinations_split_into_several_figures(tmp_path: Path) -> None:
    grid = {"p": ["0.5", "1.0"], "opt_out": ["0.0", "0.1", "0.2", "0.3", "0.4"]}
    root = make_sweep(tmp_path / "s", grid, [0])
    stems = ("accuracy_vs_p", "local_vs_global", "client_accuracy", "gate_moe")
    text = check_report(
        root,
        ["p", "opt_out"],
        {f"{s}-{i}.png" for s in stems for i in (1, 2)}
        | {"accuracy_vs_opt_out.png"}
        | {f"frontier-{i}.png" for i in (1, 2, 3)},  # a panel per cell, 4 a figure
    )
    assert "### Accuracy vs p (2/2)" in text


def test_text_grid_key_splits_panels_and_is_not_plotted_against(tmp_path: Path) -> None:
    grid = {"p": ["0.2", "0.8"], "method.moe.pool": ["log-linear", "probability"]}
    root = make_sweep(tmp_path / "s", grid, [0, 1])
    text = check_report(root, ["p", "method.moe.pool"], {"accuracy_vs_p.png", *PLOTS})
    assert "Accuracy vs method.moe.pool: `method.moe.pool` values are not numbers" in text
    assert "- MoE (`method.moe`): pool (grid)" in text


def test_gate_means_skip_missing_clients() -> None:
    gate = {"local_test": {"majority": [0.5, None, 0.7], "other": [None]}}
    means = gate_means({"methods": {"moe": {"gate": gate}}}, "moe")
    assert means is not None
    assert means[0] == pytest.approx(0.6) and math.isnan(means[1])
    assert gate_means({"methods": {"moe": {}}}, "moe") is None
    assert gate_means({"methods": {}}, "moe") is None


def test_gate_bars_are_ticked_by_value_and_show_all_samples_without_majority_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedmoe.report import figures, plots

    drawn: dict[str, list[Any]] = {}
    monkeypatch.setattr(plots, "plot_bars", lambda path, *a: drawn.setdefault(path.name, a[3]))
    root = make_sweep(tmp_path / "s", {"p": ["0.5", "0.8"]}, [0])
    figures.write_plots(read_sweep(root), tmp_path)
    (panel,) = drawn["gate_moe.png"]
    assert panel.groups == ("0.5", "0.8")  # the axis names p
    assert panel.bars == ("majority-class samples", "other samples")
    # A Dirichlet partition names no majority classes: every sample is another's.
    for run in (root / "runs").iterdir():
        path = run / "results.json"
        results = json.loads(path.read_text())
        gate = results["methods"]["moe"]["gate"]["local_test"]
        gate["majority"] = [None] * 4
        gate["other"] = [0.7, 0.6, 0.5, 0.4]
        path.write_text(json.dumps(results))
    drawn.clear()
    figures.write_plots(read_sweep(root), tmp_path)
    (panel,) = drawn["gate_moe.png"]
    assert panel.bars == ("all samples",)
    assert panel.values == ((pytest.approx(0.55), pytest.approx(0.55)),)


def test_labels_descriptions_and_order_come_from_the_results(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.5"]}, [0])
    for run in (root / "runs").iterdir():
        results = json.loads((run / "results.json").read_text())
        methods = results["methods"]
        methods["moe"]["label"] = "Mixture | gated"
        # The report follows the runs' method order, not a built-in one.
        results["methods"] = {m: methods[m] for m in ("moe", "finetune", "local", "fedavg")}
        (run / "results.json").write_text(json.dumps(results))
    text = write_report(root).read_text()
    assert "| p | seeds | Mixture \\| gated | FT | Local | FedAvg |" in text
    assert "- Methods: Mixture \\| gated, FT, Local, FedAvg" in text
    assert "| p | Mixture \\| gated - FT | Mixture \\| gated - Local |" in text
    assert "### Mixture | gated gate weight on the specialist" in text


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
    "format 1 run": (
        _edit_results(lambda r: r.pop("format")),
        "runs/p=0.2-s0/results.json",
        "results.json format 1, not 2",
    ),
    "bad baselines": (
        _edit_results(lambda r: r["methods"]["moe"].update(baselines={"local_test": "local"})),
        "runs/p=0.2-s0/results.json",
        "methods.moe.baselines must map local_test / global_test to lists of methods",
    ),
    "label not a string": (
        _edit_results(lambda r: r["methods"]["local"].update(label=3)),
        "runs/p=0.2-s0/results.json",
        "methods.local.label is not a string",
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


def _variants(results: dict[str, Any]) -> dict[str, Any]:
    """``moe``'s entry with two variants whose accuracies depend on p and the seed."""
    p, seed = results["config"]["partition"]["p"], results["config"]["seed"]
    plus: dict[str, Any] = json.loads(json.dumps(results["methods"]["moe"]))
    plus["label"], plus["description"] = "MoE+", "a fitted gate"
    plus["variants"] = {
        "best": {"local_test": {"mean": 0.8 + 0.1 * p + 0.01 * seed},
                 "global_test": {"mean": 0.7}},
        "worse": {"local_test": {"mean": 0.5}, "global_test": {"mean": 0.6 + 0.02 * seed}},
    }  # fmt: skip
    return plus


def test_variants_table_lists_each_variant_then_the_other_mixtures(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.5", "1.0"]}, [0, 1])
    add_method(root, "moe-plus", _variants)
    sweep = read_sweep(root)
    table = variants_table(sweep, "moe-plus", "local").splitlines()
    assert table[2:4] == [
        "| best | **85.5 ± 0.7** | **90.5 ± 0.7** |",
        "| worse | 50.0 ± 0.0 | 50.0 ± 0.0 |",
    ]
    # Then the other mixture of the same runs (sweep.csv's rows), with its description.
    moe = [accuracy(c, "moe", "local") for c in sweep.cells]
    assert table[4:] == [
        "| MoE: the moe method (`moe`) | "
        + " | ".join(f"{100 * s.mean:.1f} ± {100 * s.std:.1f}" for s in moe)
        + " |"
    ]
    assert variants_table(sweep, "moe-plus", "global").splitlines()[3] == (
        "| worse | 61.0 ± 1.4 | 61.0 ± 1.4 |"
    )
    text = write_report(root).read_text()
    assert "## MoE+ variants" in text and "The variants `moe-plus` fits" in text
    assert "## MoE variants" not in text
    assert variants_table(sweep, "moe", "local") == ""
    assert variants_table(sweep, "moe-plus", "x") == ""


def test_setup_lists_config_keys_that_differ_with_missing_keys_at_their_default(
    tmp_path: Path,
) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.5", "1.0"]}, [0])
    runs = sorted((root / "runs").iterdir())

    def edit(run: Path, change: Callable[[dict[str, Any]], None]) -> None:
        results = json.loads((run / "results.json").read_text())
        change(results["config"])
        (run / "results.json").write_text(json.dumps(results))

    def differing() -> list[str]:
        return [
            line
            for line in write_report(root).read_text().splitlines()
            if line.startswith("- Config entries")
        ]

    # Written by an older fedmoe without the key vs the key at its default; an option
    # without a default (a method the default config does not list) in one run only.
    edit(runs[0], lambda c: c.update(tensorboard=False))
    edit(runs[0], lambda c: c["method"].update({"half-half": {"share": 0.5}}))
    assert differing() == [
        "- Config entries that differ between runs besides the grid and the seed: none"
    ]
    edit(runs[1], lambda c: c.update(tensorboard=True))
    edit(runs[1], lambda c: c["method"].update({"half-half": {"share": 0.7}}))
    assert differing() == [
        "- Config entries that differ between runs besides the grid and the seed: "
        "`method.half-half.share`, `tensorboard`"
    ]


def _half(results: dict[str, Any]) -> dict[str, Any]:
    """A mixture no code knows of: half the way from FT to MoE, with its own gate."""
    ft, moe = results["methods"]["finetune"], results["methods"]["moe"]
    local, glob = (
        [
            round((a + b) / 2, 6)
            for a, b in zip(ft[s]["per_client"], moe[s]["per_client"], strict=True)
        ]
        for s in ("local_test", "global_test")
    )
    gate = {"majority": [0.6, 0.7, None, 0.8], "other": [0.2, 0.3, 0.4, None]}
    half = entry("half-half", local, glob, gate)
    half["label"], half["description"] = "Half", "half FT, half MoE"
    half["baselines"] = {"local_test": ["finetune", "local"], "global_test": ["fedavg", "ifca"]}
    return half


def test_a_method_only_the_results_know_is_in_every_table_and_plot(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.5", "0.8"]}, [0, 1])
    add_method(root, "half-half", _half)
    add_method(root, "moe-plus", _variants)
    methods = (*METHODS, "half-half", "moe-plus")
    text = write_report(root).read_text()
    for split in ("local", "global"):
        for line in expected_rows(root, ["p"], split, methods):
            assert line in text, line
    assert "| p | seeds | FedAvg | Local | FT | MoE | Half | MoE+ |" in text
    assert "- Methods: FedAvg, Local, FT, MoE, Half, MoE+" in text
    # Paired differences: its baselines on each split (one the sweep lacks is left out).
    assert "| p | MoE - FT | MoE - Local | Half - FT | Half - Local | MoE+ - FT |" in text
    assert "| p | MoE - FedAvg | MoE - FT | Half - FedAvg | MoE+ - FedAvg | MoE+ - FT |" in text
    sweep = read_sweep(root)
    cell = sweep.cells[0]
    diffs = [100 * (acc(cell, s, "half-half") - acc(cell, s, "finetune")) for s in (0, 1)]
    ahead = sum(d > 0 for d in diffs)
    assert (
        f"| 0.5 | {text_entry(sweep, 'moe', 'finetune')} | "
        f"{text_entry(sweep, 'moe', 'local')} | "
        f"{statistics.fmean(diffs):+.2f} ± {statistics.stdev(diffs):.2f} ({ahead}/2) |"
    ) in text
    # Its gate plot, and a row of the variants table.
    assert "### Half gate weight on the specialist" in text
    assert (root / "plots" / "gate_half-half.png").read_bytes().startswith(PNG)
    assert "](plots/gate_half-half.png)" in text
    assert "| Half: half FT, half MoE (`half-half`) |" in text
    means = gate_means(sweep.runs[cell.rows[0].run], "half-half")
    assert means is not None and means == pytest.approx((0.7, 0.3))


def acc(cell: Any, seed: int, method: str, split: str = "local") -> float:
    (row,) = [r for r in cell.rows if (r.seed, r.method) == (seed, method)]
    return float(row.accuracy(split))


def text_entry(sweep: Any, method: str, baseline: str) -> str:
    """The paired-differences entry of the first cell, local split, computed here."""
    cell = sweep.cells[0]
    seeds = sorted({r.seed for r in cell.rows})
    diffs = [100 * (acc(cell, s, method) - acc(cell, s, baseline)) for s in seeds]
    ahead = sum(d > 0 for d in diffs)
    return f"{statistics.fmean(diffs):+.2f} ± {statistics.stdev(diffs):.2f} ({ahead}/{len(diffs)})"


def test_a_sweep_without_a_mixture_says_so(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.5", "0.8"]}, [0])
    for run in (root / "runs").iterdir():
        results = json.loads((run / "results.json").read_text())
        for m in results["methods"].values():
            m.pop("gate", None)
            m.pop("baselines", None)
        (run / "results.json").write_text(json.dumps(results))
    text = write_report(root).read_text()
    assert "- Gate weight on the specialist: no method of the sweep has a gate." in text
    assert "## Paired differences" not in text
    assert not (root / "plots" / "gate_moe.png").exists()


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
        "a resumed run counts its earlier processes up to their last checkpoint); "
        "torch threads 1"
    ]


def test_the_leaderboard_ranks_methods_and_pairs_each_mixture_with_the_best_baseline(
    tmp_path: Path,
) -> None:
    from fedmoe.report.leaderboard import best_baseline, ranking, worst_clients

    root = make_sweep(tmp_path / "sw", {"p": ["0.5", "1.0"]}, [0, 1])
    for run in (root / "runs").iterdir():
        path = run / "results.json"
        results = json.loads(path.read_text())
        results["timing_s"] = {"fedavg": 100.0, "local": 10.0, "finetune": 20.0, "moe": 30.0}
        if run.name.startswith("p=0.5"):  # clients 1 and 3 opted out: new clients
            results["partition"] = {"opt_out": [False, True, False, True]}
        path.write_text(json.dumps(results))
    text = write_report(root).read_text()
    sweep = read_sweep(root)
    board = text.split("## Leaderboard")[1].split("## Paired differences")[0]
    for cell in sweep.cells:
        assert ranking(cell, sweep.methods) == ["moe", "finetune", "local", "fedavg"]
        assert best_baseline(sweep, cell) == "finetune"
        p = cell.grid[0].text
        table = board.split(f"### p = {p}\n")[1].split("###")[0]
        rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ")][1:]
        assert [r[1] for r in rows] == ["**MoE**", "FT", "Local", "FedAvg"]
        worst = [min(_accuracies({"p": p}, s, 3)[0]) for s in (0, 1)]
        assert (
            rows[0][4]
            == f"{100 * statistics.fmean(worst):.2f} ± {100 * statistics.stdev(worst):.2f}"
        )
        if p == "0.5":
            assert "| new clients, local (%) |" in table
            new = [statistics.fmean(_accuracies({"p": p}, s, 3)[0][1::2]) for s in (0, 1)]
            mean, std = 100 * statistics.fmean(new), 100 * statistics.stdev(new)
            assert rows[0][5] == f"{mean:.2f} ± {std:.2f}"
        else:
            assert "new clients" not in table
        assert rows[0][-1].rstrip(" |") == "30"
        diffs = [
            100
            * (
                statistics.fmean(_accuracies({"p": p}, s, 3)[0])
                - statistics.fmean(_accuracies({"p": p}, s, 2)[0])
            )
            for s in (0, 1)
        ]
        ratio = accuracy(cell, "moe", "global").mean / accuracy(cell, "fedavg", "global").mean
        expected = (
            f"- MoE minus FT (the best baseline), local test: {statistics.fmean(diffs):+.2f} ± "
            f"{statistics.stdev(diffs):.2f} points, ahead in 2 of 2 seed(s); global test "
            f"{ratio:.3f} x FedAvg's"
        )
        assert expected in table
    assert worst_clients([0.9, 0.2, 0.5]) == 0.2
    assert worst_clients([float(i) for i in range(20)]) == 0.5


def test_contenders_are_the_methods_under_test_and_the_fields_mixtures_are_baselines(
    tmp_path: Path,
) -> None:
    from fedmoe.report.leaderboard import best_baseline

    def shifted(name: str, by: float, contender: bool | None, gate: bool) -> Callable[..., Any]:
        def make(results: dict[str, Any]) -> dict[str, Any]:
            moe = results["methods"]["moe"]
            local = [v + by for v in moe["local_test"]["per_client"]]
            glob = moe["global_test"]["per_client"]
            out = entry(name, local, glob, moe["gate"]["local_test"] if gate else None)
            if contender is not None:
                out["contender"] = contender
            return out

        return make

    root = make_sweep(tmp_path / "sw", {"p": ["0.5"]}, [0, 1])
    add_method(root, "pfl-moe", shifted("pfl-moe", 0.02, False, gate=True))  # the field's mixture
    add_method(root, "mine", shifted("mine", 0.01, True, gate=False))  # a user's method under test
    sweep = read_sweep(root)
    # MoE predates the key: a mixture, so under test; PFL-MoE says it is not.
    assert sweep.contenders == ("moe", "mine")
    assert sweep.mixtures == ("moe", "pfl-moe")
    cell = sweep.cells[0]
    assert best_baseline(sweep, cell) == "pfl-moe"
    text = write_report(root).read_text()
    assert "| 1 | pfl-moe |" in text and "| 2 | **mine** |" in text
    assert "- mine minus pfl-moe (the best baseline), local test: -1.00 ± 0.00" in text
    assert "- MoE minus pfl-moe (the best baseline), local test: -2.00 ± 0.00" in text
    # Runs from before results said: PFL-MoE is still a baseline, other mixtures are not.
    old = make_sweep(tmp_path / "old", {"p": ["0.5"]}, [0])
    add_method(old, "pfl-moe", shifted("pfl-moe", 0.02, None, gate=True))
    assert read_sweep(old).contenders == ("moe",)
    bad = make_sweep(tmp_path / "bad", {"p": ["0.5"]}, [0])
    add_method(bad, "mine", lambda r: {**shifted("mine", 0.0, None, False)(r), "contender": "yes"})
    with pytest.raises(ReportError, match=r"methods\.mine\.contender must be true or false"):
        read_sweep(bad)


def test_the_tuning_section_chooses_each_methods_cell_on_validation(tmp_path: Path) -> None:
    from fedmoe.report.tuning import choices

    root = make_sweep(tmp_path / "tune", {"method.moe.lr": ["0.001", "0.01", "0.1"]}, [0, 1])
    assert "## Chosen on validation" not in write_report(root).read_text()  # no val scores
    # MoE's validation accuracy peaks at lr 0.01 (its test accuracy at 0.1: not chosen
    # on); FedAvg's is the same in every cell: nothing to choose.
    val = {"0.001": 0.70, "0.01": 0.80, "0.1": 0.75}

    def score(run: str, method: str) -> float:
        lr, seed = run.split("=")[1].split("-s")
        return val[lr] + 0.01 * int(seed) if method == "moe" else 0.6

    add_validation(root, score)
    sweep = read_sweep(root)
    chosen = choices(sweep)
    assert list(chosen) == ["moe"] and chosen["moe"].grid[0].text == "0.01"
    section = write_report(root).read_text().split("## Chosen on validation")[1].split("##")[0]
    assert "| method.moe.lr | MoE |" in section
    assert "| 0.01 | **80.50 ± 0.71** |" in section and "| 0.1 | 75.50 ± 0.71 |" in section
    assert "- MoE: method.moe.lr = 0.01 (validation 80.50 ± 0.71%; local test" in section


def test_a_grid_over_the_data_has_no_tuning_section(tmp_path: Path) -> None:
    from fedmoe.report.tuning import is_data

    # Settings are different problems, not candidates: no "choice" of p or alpha.
    assert is_data("p") and is_data("alpha") and is_data("partition.rotations")
    assert is_data("dataset") and not is_data("method.moe.lr") and not is_data("personalise.lr")
    root = make_sweep(tmp_path / "study", {"p": ["0.5", "0.8"]}, [0])
    add_validation(root, lambda run, _: 0.9 if "0.8" in run else 0.8)
    assert "## Chosen on validation" not in write_report(root).read_text()


def test_up_to_a_hundred_methods_each_have_their_own_colour_and_marker() -> None:
    from fedmoe.report.plots import PALETTE, Methods

    names = tuple(f"m{i}" for i in range(100))
    methods = Methods(names, names)
    styles = [methods.style(m) for m in names]
    assert len(set(styles)) == 100
    assert styles[:10] == list(PALETTE)  # the first ten as before


def test_a_cell_still_in_progress_says_which_methods_and_seeds_it_lacks(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.5", "0.8"]}, [0, 1])
    with (root / "sweep.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    at = {c: rows[0].index(c) for c in ("cell", "seed", "method")}

    def dropped(row: list[str]) -> bool:
        late = row[at["cell"]] == "p=0.8"
        return late and (
            row[at["method"]] == "local" or (row[at["method"]], row[at["seed"]]) == ("moe", "1")
        )

    with (root / "sweep.csv").open("w", newline="") as f:
        csv.writer(f).writerows([r for r in rows if not dropped(r)])
    board = write_report(root).read_text().split("## Leaderboard")[1].split("\n## ")[0]
    early, late = board.split("### p = 0.8")
    assert "Not run in this cell" not in early and "fewer seeds" not in early
    assert "- Not run in this cell (yet): Local." in late
    assert "- Over fewer seeds than the 2 of others here: MoE (1)." in late


def test_a_federated_phase_that_diverged_is_named_under_its_cell(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "s", {"p": ["0.5", "1.0"]}, [0, 1])
    path = root / "runs" / "p=1.0-s1" / "results.json"
    results = json.loads(path.read_text())
    history = [
        {"round": 4, "clients": [0], "val_loss": 0.9, "val_accuracy": 0.6, "improved": True},
        # No node replied: not a divergence.
        {"round": 9, "clients": [1], "val_loss": None, "val_accuracy": None, "improved": False},
        {"round": 14, "clients": [2], "val_loss": None, "val_accuracy": 0.1, "improved": False},
        {"round": 19, "clients": [3], "val_loss": None, "val_accuracy": 0.1, "improved": False},
    ]
    results["methods"]["fedavg"]["federation"] = {
        "best_round": 4,
        "rounds_run": 20,
        "history": history,
    }
    path.write_text(json.dumps(results))
    board = write_report(root).read_text().split("## Leaderboard")[1].split("\n## ")[0]
    early, late = board.split("### p = 1.0")
    assert "Diverged" not in early
    # A malformed federation entry is no divergence (and no crash).
    for federation in ({"history": history}, {"best_round": 4, "history": [1, {"round": "x"}]}):
        assert diverged({"methods": {"m": {"federation": federation}}}, "m") is None
    assert (
        "- Diverged (the server model's validation loss became non-finite; the method uses "
        "the best round validated before it): FedAvg (seed 1: round 14, kept round 4)."
    ) in late


def test_the_frontier_is_the_methods_no_other_beats_on_both_accuracies() -> None:
    from fedmoe.report.plots import ScatterPoint, frontier

    def point(name: str, x: float, y: float) -> ScatterPoint:
        return ScatterPoint(name, name, x, y, 0.0, 0.0)

    fedavg, ft, moe = point("fedavg", 85, 84), point("ft", 83, 90), point("moe", 81, 92)
    behind = [point("ifca", 84, 83), point("ditto", 82, 89), point("tie", 83, 89.5)]
    twin = point("twin", 83, 90)  # equal on both: not beaten, so on the frontier too
    edge = frontier([moe, *behind, fedavg, ft, twin])
    assert [p.method for p in edge] == ["moe", "ft", "twin", "fedavg"]
    assert frontier([]) == []


def test_a_frontier_panel_leaves_out_only_points_beyond_a_wide_gap() -> None:
    from fedmoe.report.plots import ScatterPoint, _far_left

    xs = {"fedavg": 82.0, "ifca": 77.8, "ft": 72.0, "fedbabu": 63.5, "ditto": 57.9, "local": 18.9}
    points = [ScatterPoint(m, m, x, 90.0, 0.0, 0.0) for m, x in xs.items()]
    assert [p.method for p in _far_left(points)] == ["local"]
    assert _far_left(points[:-1]) == [] and _far_left([]) == []


def test_x_tick_labels_too_close_to_the_last_labelled_one_are_left_blank() -> None:
    from fedmoe.report.plots import tick_labels

    assert tick_labels([0.0, 0.01, 0.05, 0.2], log=False) == ["0", "", "0.05", "0.2"]
    assert tick_labels([0.2, 0.5, 0.8, 0.9, 1.0], log=False) == ["0.2", "0.5", "0.8", "0.9", "1"]
    assert tick_labels([1e-4, 1.1e-4, 1e-2], log=True) == ["0.0001", "", "0.01"]
    assert tick_labels([3.0], log=False) == ["3"]


def test_grid_values_over_decades_are_plotted_on_a_log_axis() -> None:
    from fedmoe.report.plots import log_axis

    assert log_axis([5e-5, 5e-4, 5e-3]) and log_axis([0.01, 1.0])
    assert not log_axis([0.2, 0.5, 0.8, 1.0])  # p: linear
    assert not log_axis([0.0, 0.5, 0.9]) and not log_axis([0.1])
