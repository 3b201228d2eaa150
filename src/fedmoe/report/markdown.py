"""``fedmoe report DIR``: tables and plots of a sweep directory, as markdown + PNG.

Input: what ``fedmoe sweep`` writes (:mod:`fedmoe.sweep.reader` reads and validates
it; results.json in format 2, docs/results-format.md). Output: ``DIR/report.md`` and
``DIR/plots/*.png`` (:mod:`fedmoe.report.figures`). No method is named here: what the
report shows of each (label, description, gate, paired baselines, variants) comes from
its entry in the runs' results.json. Every problem with the input is a
:class:`ReportError` naming the file (and line) at fault, raised before anything is
written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedmoe.errors import FedmoeError
from fedmoe.experiment import config as cfgmod
from fedmoe.report.figures import Plot, Skipped, write_plots
from fedmoe.report.leaderboard import leaderboard_section
from fedmoe.report.paired import paired_section
from fedmoe.report.tuning import tuning_section
from fedmoe.sweep.reader import (
    SPLITS,
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

__all__ = [
    "ReportError",
    "Sweep",
    "accuracy",
    "gate_means",
    "read_sweep",
    "variants_table",
    "write_report",
]

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
    head = [*keys, "seeds", *(_md(sweep.label(m)) for m in sweep.methods)]
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


def _variant_labels(sweep: Sweep, method: str) -> list[str]:
    """The labels of ``method``'s variants over the runs, in the order first seen."""
    labels: list[str] = []
    for results in sweep.runs.values():
        found = lookup(results["methods"].get(method), "variants")
        if isinstance(found, dict):
            labels += [label for label in found if label not in labels]
    return labels


#: A row's accuracy in a cell on a split (``local`` or ``global``) over seeds.
RowStat = Callable[[Sweep, Cell, str], Stat]


def _variant_stat(method: str, label: str) -> RowStat:
    def stat(sweep: Sweep, cell: Cell, split: str) -> Stat:
        means = []
        for results in runs_of(sweep, cell, method):
            variants = results["methods"][method].get("variants")
            entry = variants.get(label) if isinstance(variants, dict) else None
            mean = lookup(entry, f"{SPLITS[split]}.mean")
            if is_number(mean):
                means.append(float(mean))
        return Stat.of(means)

    return stat


def _method_stat(method: str) -> RowStat:
    def stat(sweep: Sweep, cell: Cell, split: str) -> Stat:
        return accuracy(cell, method, split)

    return stat


def _variant_rows(sweep: Sweep, method: str) -> list[tuple[str, RowStat]]:
    """The variants table's rows: each of ``method``'s variants, then the sweep's
    other mixtures (label, description and name); empty without variants."""
    labels = _variant_labels(sweep, method)
    if not labels:
        return []
    rows = [(label, _variant_stat(method, label)) for label in labels]
    for other in sweep.mixtures:
        if other != method:
            info = sweep.info[other]
            text = f"{info.label}: {info.description}" if info.description else info.label
            rows.append((f"{text} (`{other}`)", _method_stat(other)))
    return rows


def variants_table(sweep: Sweep, method: str, split: str) -> str:
    """Markdown table of ``method``'s variants (``variants`` in its results, e.g. an
    ablation) on ``split`` (``local`` or ``global``): one row per variant and per other
    mixture of the sweep, one column per cell, client-mean accuracy in percent as mean
    ± std over seeds, the best row of each column in bold; empty without variants."""
    rows = _variant_rows(sweep, method) if split in SPLITS else []
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


def _variants_sections(sweep: Sweep) -> str:
    """One section per method with variants, in method order."""
    parts = []
    for method in sweep.methods:
        local = variants_table(sweep, method, "local")
        if not local:
            continue
        label = _md(sweep.label(method))
        parts.append(
            f"## {label} variants\n\n"
            f"The variants `{method}` fits (first row: as configured), then the other "
            "mixtures of the same runs. Client-mean accuracy in percent, mean ± std over "
            "seeds; the best row of each column in bold.\n\n"
            f"### On each client's local test set\n\n{local}\n\n"
            "### On the global test set\n\n"
            f"{variants_table(sweep, method, 'global')}\n\n"
        )
    return "".join(parts)


def _fmt(value: Any) -> str:
    return "?" if value is None else str(value)


def _option(value: Any) -> str:
    return f"`{value}`" if isinstance(value, str) else _fmt(value)


def _config_lines(sweep: Sweep) -> list[str]:
    """The first run's dataset and configuration (the shared phases, then the options
    of each method that has a ``[method.<name>]`` section), and config keys that differ
    between runs other than the grid keys and the seed."""
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
        f"- Federated phase: up to {get('federated.rounds')} rounds, "
        f"{get('federated.clients_per_round')} clients per round, "
        f"{get('federated.local_epochs')} local epochs, batch {get('federated.batch_size')}, "
        f"{get('federated.optimizer')} lr {get('federated.lr')}, early stopping "
        f"{get('federated.early_stopping')}",
        f"- Personalisation: up to {get('personalise.epochs')} epochs, batch "
        f"{get('personalise.batch_size')}, {get('personalise.optimizer')} lr "
        f"{get('personalise.lr')}",
    ]
    sections = cfg.get("method") if isinstance(cfg.get("method"), dict) else {}
    assert isinstance(sections, dict)
    for method in sweep.methods:
        options = sections.get(method)
        if isinstance(options, dict) and options:
            where = f"method.{method}"
            values = ", ".join(
                f"{k} " + ("(grid)" if f"{where}.{k}" in grid else _option(v))
                for k, v in _flatten(options).items()
            )
            lines.append(f"- {_md(sweep.label(method))} (`{where}`): {_md(values)}")
    lines.append(
        f"- Device `{get('device')}`, {get('dtype')}; fedmoe {_fmt(first.get('fedmoe_version'))}"
    )
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
    """Config keys whose value differs between runs. A key missing from a run's config
    (written by a fedmoe that predates it) counts as its default; where the key has no
    default (an option of a method the default config does not list), runs without it
    are left out of the comparison (``methods`` tells those runs apart)."""
    defaults = _flatten(cfgmod.to_dict(cfgmod.from_dict({})))
    flats = [_flatten(r.get("config", {})) for r in sweep.runs.values()]
    keys = sorted({k for f in flats for k in f} - ignore)
    out = []
    for k in keys:
        values = [f[k] if k in f else defaults.get(k) for f in flats if k in f or k in defaults]
        if len({json.dumps(v, sort_keys=True) for v in values}) > 1:
            out.append(k)
    return out


def _setup(sweep: Sweep) -> str:
    grid = [f"`{k}` ∈ {{{', '.join(v.text for v in sweep.values(k))}}}" for k in sweep.keys]
    runs = len(sweep.runs)
    seeds = ", ".join(str(s) for s in sweep.seeds)
    lines = [
        f"- Grid: {'; '.join(grid) if grid else 'none (a single cell)'} — "
        f"{len(sweep.cells)} cell(s), {runs} run(s)",
        f"- Seeds: {seeds}",
        f"- Methods: {', '.join(_md(sweep.label(m)) for m in sweep.methods)}",
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
        "paused; a resumed run counts its earlier processes up to their last checkpoint); "
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
        f"{leaderboard_section(sweep)}"
        f"{tuning_section(sweep)}"
        f"{paired_section(sweep)}"
        f"{_variants_sections(sweep)}"
        "## Plots\n\n"
        f"{_plots_section(found)}"
    )


def write_report(directory: Path) -> Path:
    """Read the sweep in ``directory`` (see the module docstring), write
    ``directory/report.md`` and its PNG plots under ``directory/plots/``, and return the
    report's path. Raises :class:`ReportError` for bad input (before writing anything)
    and :class:`~fedmoe.errors.FedmoeError` when a file cannot be written. A PNG an
    earlier report of the directory wrote and this one does not is removed."""
    sweep = read_sweep(Path(directory))
    out = sweep.directory / PLOTS_DIR
    found = write_plots(sweep, out)
    written = {item.file for item in found if isinstance(item, Plot)}
    for stale in out.glob("*.png"):
        if stale.name not in written:
            try:
                stale.unlink()
            except OSError as exc:
                raise FedmoeError(f"{stale}: cannot remove ({exc.strerror or exc})") from None
    report = sweep.directory / REPORT_MD
    try:
        report.write_text(render(sweep, found), encoding="utf-8")
    except OSError as exc:
        raise FedmoeError(f"{report}: cannot write the report ({exc.strerror or exc})") from None
    return report
