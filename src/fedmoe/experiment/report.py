"""``fedmoe report DIR``: tables and plots of a sweep directory, as markdown + PNG.

Input: what ``fedmoe sweep`` writes (:mod:`fedmoe.experiment.sweep_results` reads and
validates it). Output: ``DIR/report.md`` and ``DIR/plots/*.png``
(:mod:`fedmoe.experiment.report_plots`). Every problem with the input is a
:class:`ReportError` naming the file (and line) at fault, raised before anything is
written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedmoe.errors import FedmoeError
from fedmoe.experiment.config import ExperimentConfig, to_dict
from fedmoe.experiment.paired import paired_section
from fedmoe.experiment.plots import method_label
from fedmoe.experiment.report_plots import Plot, Skipped, write_plots
from fedmoe.experiment.sweep_results import (
    Cell,
    ReportError,
    Stat,
    Sweep,
    accuracy,
    canonical,
    gate_means,
    is_number,
    lookup,
    read_sweep,
    runs_of,
)

__all__ = ["ReportError", "Sweep", "accuracy", "gate_means", "read_sweep", "write_report"]

REPORT_MD = "report.md"
PLOTS_DIR = "plots"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _percent(stat: Stat) -> str:
    if not stat.n:
        return "-"
    if stat.n == 1:
        return f"{100 * stat.mean:.1f}"
    return f"{100 * stat.mean:.1f} ± {100 * stat.std:.1f}"


def _seed_count(cell: Cell, methods: Sequence[str]) -> str:
    counts = sorted({len(cell.seeds(m)) for m in methods} - {0})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def accuracy_table(sweep: Sweep, split: str) -> str:
    """Markdown table: one row per cell (its grid values and seed count), one column per
    method, ``mean ± std`` over seeds in percent (one decimal; no ± for one seed); the
    best mean of a row in bold; ``n`` after an entry when its seed count differs."""
    keys = [_md(k) for k in sweep.keys] or ["cell"]
    head = [*keys, "seeds", *(method_label(m) for m in sweep.methods)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in sweep.cells:
        stats = [accuracy(cell, m, split) for m in sweep.methods]
        best = max((round(100 * s.mean, 1) for s in stats if s.n), default=None)
        seeds = _seed_count(cell, sweep.methods)
        entries = []
        for s in stats:
            text = _percent(s)
            if s.n and round(100 * s.mean, 1) == best:
                text = f"**{text}**"
            if s.n and str(s.n) != seeds:
                text += f" (n={s.n})"
            entries.append(text)
        grid = [_md(v.text) for v in cell.grid] or [_md(cell.name)]
        lines.append("| " + " | ".join([*grid, seeds, *entries]) + " |")
    return "\n".join(lines)


def _ablation_labels(sweep: Sweep) -> list[str]:
    labels: list[str] = []
    for results in sweep.runs.values():
        labels += [label for label in results.get("ablation", {}) if label not in labels]
    return labels


#: Rows the ablation table takes from other methods of the same runs.
_METHOD_ROWS = (
    ("moe-ifca", "the configured gate over the specialist, global and cluster (IFCA) models"),
    ("ifca", "no gate: the client's best IFCA cluster model"),
    ("moe", "paper MoE, joint schedule"),
    ("moe-staged", "paper MoE, staged schedule (gate alone, then joint)"),
)

#: A row's accuracy in a cell on a split (``local_test`` or ``global_test``) over seeds.
RowStat = Callable[[Sweep, Cell, str], Stat]


def _variant_stat(label: str) -> RowStat:
    def stat(sweep: Sweep, cell: Cell, split: str) -> Stat:
        entries = [r.get("ablation", {}).get(label) for r in runs_of(sweep, cell)]
        return Stat.of([e[split]["mean"] for e in entries if e is not None])

    return stat


def _method_stat(method: str) -> RowStat:
    def stat(sweep: Sweep, cell: Cell, split: str) -> Stat:
        return accuracy(cell, method, split.removesuffix("_test"))

    return stat


def _ablation_rows(sweep: Sweep) -> list[tuple[str, RowStat]]:
    """The ablation table's rows: each gate variant, then the methods of
    :data:`_METHOD_ROWS` the sweep has; empty without gate variants."""
    labels = _ablation_labels(sweep)
    if not labels:
        return []
    rows = [(label, _variant_stat(label)) for label in labels]
    rows += [
        (f"{text} (`{method}`)", _method_stat(method))
        for method, text in _METHOD_ROWS
        if method in sweep.methods
    ]
    return rows


def ablation_table(sweep: Sweep, split: str) -> str:
    """Markdown table of the ``moe-plus`` ablation (runs with ``moe_plus.ablation``): one
    row per gate variant and per related method (:data:`_METHOD_ROWS`), one column per
    cell, client-mean accuracy in percent as mean ± std over seeds, the best row of each
    column in bold; empty without ablations."""
    rows = _ablation_rows(sweep)
    if not rows:
        return ""
    head = ["variant", *(_md(c.name) for c in sweep.cells)]
    table = [[_md(label)] for label, _ in rows]
    for cell in sweep.cells:
        stats = [stat(sweep, cell, split) for _, stat in rows]
        best = max((round(100 * s.mean, 1) for s in stats if s.n), default=None)
        for row, stat in zip(table, stats, strict=True):
            bold = stat.n and round(100 * stat.mean, 1) == best
            row.append(f"**{_percent(stat)}**" if bold else _percent(stat))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines)


def _ablation_section(sweep: Sweep) -> str:
    local = ablation_table(sweep, "local_test")
    if not local:
        return ""
    return (
        "## MoE+ ablation\n\n"
        "The gate of `moe-plus` with each of its options switched in turn (first row: the "
        "configured variant; then each option switched, then every option switched), "
        "then the related methods the runs have: the same gate over clustered global "
        "models, the best cluster model alone, and the paper's MoE with each schedule. "
        "Client-mean accuracy in percent, mean ± std over seeds; the best row of each "
        "column in bold.\n\n"
        f"### On each client's local test set\n\n{local}\n\n"
        f"### On the global test set\n\n{ablation_table(sweep, 'global_test')}\n\n"
    )


def _fmt(value: Any) -> str:
    return "?" if value is None else str(value)


def _config_lines(sweep: Sweep) -> list[str]:
    """The first run's dataset and configuration, and config keys that differ between
    runs other than the grid keys and the seed."""
    first = sweep.runs[sweep.cells[0].rows[0].run]
    cfg = first.get("config")
    if not isinstance(cfg, dict):
        return ["- Configuration: not recorded in the runs' results.json."]
    grid = {canonical(k) for k in sweep.keys}

    def get(dotted: str) -> str:
        return "(grid)" if dotted in grid else _fmt(lookup(cfg, dotted))

    ds = first.get("dataset") if isinstance(first.get("dataset"), dict) else {}
    assert isinstance(ds, dict)
    lines = [
        f"- Dataset: `{_fmt(ds.get('name', cfg.get('dataset')))}`"
        + (f" ({ds['source']})" if ds.get("source") else "")
        + f"; model `{_fmt(ds.get('model', cfg.get('model')))}`"
        + (f" ({ds['model_params']:,} parameters)" if is_number(ds.get("model_params")) else ""),
        f"- Partition: scheme `{get('partition.scheme')}`, {get('partition.clients')} clients, "
        f"{get('partition.train')}/{get('partition.val')}/{get('partition.test')} "
        f"train/val/test samples each, p {get('partition.p')}, overlapping pairs "
        f"{get('partition.overlap')}, opt-out {get('partition.opt_out')}",
        f"- FedAvg: up to {get('fedavg.rounds')} rounds, {get('fedavg.clients_per_round')} "
        f"clients per round, {get('fedavg.local_epochs')} local epochs, batch "
        f"{get('fedavg.batch_size')}, {get('fedavg.optimizer')} lr {get('fedavg.lr')}, "
        f"early stopping {get('fedavg.early_stopping')}",
        f"- Personalisation: up to {get('personalise.epochs')} epochs, batch "
        f"{get('personalise.batch_size')}, {get('personalise.optimizer')} lr "
        f"{get('personalise.lr')} (MoE {get('personalise.moe_lr')}), mixture pool "
        f"`{get('personalise.pool')}`, specialist trained {get('personalise.train_specialist')}",
        f"- Device `{get('device')}`, {get('dtype')}; fedmoe {_fmt(first.get('fedmoe_version'))}",
    ]
    differ = _differing(sweep, grid | {"seed"})
    lines.append(
        "- Config entries that differ between runs besides the grid and the seed: "
        + (", ".join(f"`{k}`" for k in differ) if differ else "none")
    )
    return lines


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        flat.update(_flatten(v, f"{prefix}{k}" if not prefix else f"{prefix}.{k}"))
    return flat


def _differing(sweep: Sweep, ignore: set[str]) -> list[str]:
    """Config keys whose value differs between runs; a key missing from a run's config
    (written by a fedmoe that predates it) counts as its default."""
    defaults = _flatten(to_dict(ExperimentConfig()))
    flats = [defaults | _flatten(r.get("config", {})) for r in sweep.runs.values()]
    keys = sorted({k for f in flats for k in f} - ignore)
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


def _setup(sweep: Sweep) -> str:
    grid = [f"`{k}` ∈ {{{', '.join(v.text for v in sweep.values(k))}}}" for k in sweep.keys]
    runs = len(sweep.runs)
    seeds = ", ".join(str(s) for s in sweep.seeds)
    lines = [
        f"- Grid: {'; '.join(grid) if grid else 'none (a single cell)'} — "
        f"{len(sweep.cells)} cell(s), {runs} run(s)",
        f"- Seeds: {seeds}",
        f"- Methods: {', '.join(method_label(m) for m in sweep.methods)}",
        *_config_lines(sweep),
        *_run_time(sweep),
    ]
    return "\n".join(lines)


def _run_time(sweep: Sweep) -> list[str]:
    """Total and per-run compute time from each run's ``timing_s`` (none if no run
    recorded it), and the torch threads the runs used."""
    seconds = []
    for results in sweep.runs.values():
        timing = results.get("timing_s")
        if isinstance(timing, dict) and all(is_number(v) for v in timing.values()):
            seconds.append(sum(timing.values()))
    if not seconds:
        return []
    threads = sorted({str(r.get("threads", "?")) for r in sweep.runs.values()})
    return [
        f"- Run time: {sum(seconds) / 3600:.1f} h over {len(seconds)} run(s), "
        f"{min(seconds) / 60:.1f}-{max(seconds) / 60:.1f} min each (wall time: the sum "
        "of the phases' `timing_s` in results.json, including any time the process was "
        "paused; a resumed run counts only its last process); "
        f"torch threads {', '.join(threads)}"
    ]


def _plots_section(found: Sequence[Plot | Skipped]) -> str:
    parts = []
    for item in found:
        if isinstance(item, Plot):
            parts.append(
                f"### {item.heading}\n\n![{item.heading}]({PLOTS_DIR}/{item.file})\n\n"
                f"{item.caption}\n"
            )
    skipped = [item for item in found if isinstance(item, Skipped)]
    if skipped:
        parts.append(
            "### Not plotted\n\n" + "\n".join(f"- {s.heading}: {s.reason}." for s in skipped) + "\n"
        )
    return "\n".join(parts)


def render(sweep: Sweep, found: Sequence[Plot | Skipped]) -> str:
    """The report's markdown, given the plots written (or skipped)."""
    return (
        f"# fedmoe sweep report: {_md(sweep.directory.resolve().name)}\n\n"
        "## Setup\n\n"
        f"{_setup(sweep)}\n\n"
        "## Accuracy\n\n"
        "Client-mean accuracy in percent: mean ± standard deviation over seeds (sample "
        "std, n-1; no ± with one seed); the best method of each row in bold.\n\n"
        "### On each client's local test set\n\n"
        f"{accuracy_table(sweep, 'local')}\n\n"
        "### On the global test set\n\n"
        f"{accuracy_table(sweep, 'global')}\n\n"
        f"{paired_section(sweep)}"
        f"{_ablation_section(sweep)}"
        "## Plots\n\n"
        f"{_plots_section(found)}"
    )


def write_report(directory: Path) -> Path:
    """Read the sweep in ``directory`` (see the module docstring), write
    ``directory/report.md`` and its PNG plots under ``directory/plots/``, and return the
    report's path. Raises :class:`ReportError` for bad input (before writing anything)
    and :class:`~fedmoe.errors.FedmoeError` when a file cannot be written."""
    sweep = read_sweep(Path(directory))
    out = sweep.directory / PLOTS_DIR
    found = write_plots(sweep, out)
    report = sweep.directory / REPORT_MD
    try:
        report.write_text(render(sweep, found), encoding="utf-8")
    except OSError as exc:
        raise FedmoeError(f"{report}: cannot write the report ({exc.strerror or exc})") from None
    return report
