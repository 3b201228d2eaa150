"""The ``fedmoe`` command line, thin over ``fedmoe.data`` and ``fedmoe.experiment``.

Every user error (bad argument, file, config) ends as one line on stderr,
``fedmoe: error: ...``, and exit status 2 (usage) or 1 (everything else).
"""

from __future__ import annotations

import json
import os
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from fedmoe.errors import ConfigError, FedmoeError
from fedmoe.experiment.presets import PRESETS

_PRESETS = ", ".join(PRESETS)

if typing.TYPE_CHECKING:
    from fedmoe.experiment.config import ExperimentConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Personalised federated learning with a federated mixture of experts.",
)
data_app = typer.Typer(no_args_is_help=True, help="Find, inspect and download datasets.")
app.add_typer(data_app, name="data")

console = Console()


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


@data_app.command("info")
def data_info(
    name: Annotated[
        str,
        typer.Argument(
            help="Dataset name, e.g. fashion-mnist, or your files: npz:PATH, csv:PATH, "
            "images:DIR, agnews:DIR, clients:DIR."
        ),
    ],
    data_dir: Annotated[Path | None, typer.Option(help="Look here first.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="How to read your files: data.key=value, e.g. data.label=y."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Where a dataset's files were found, its shapes, classes and per-class counts."""
    from fedmoe.data import ReadOptions, dataset_info

    options: ReadOptions | None = None
    if set_:  # the [data] section's keys, validated as fedmoe run does
        from fedmoe.experiment import config as cfgmod
        from fedmoe.experiment.prepare import read_options

        for item in set_:
            if not item.strip().startswith("data."):
                raise ConfigError(f"data info --set takes data.key=value, got {item!r}")
        options = read_options(cfgmod.from_dict(cfgmod.apply_overrides({"dataset": name}, set_)))
    info = dataset_info(name, data_dir, options)
    if as_json:
        _print_json(info)
        return
    console.print(f"[bold]{info['name']}[/bold]: {info['title']}")
    console.print(f"found in: {info['directory'] or 'built-in'}  (checksum: {info['checksum']})")
    for f in info["files"]:
        console.print(f"  {f['role']}: {f['path']}  [{f['checksum']}]")
    shapes = info["shapes"]
    console.print(
        f"train: x {tuple(shapes['x_train'])} y {tuple(shapes['y_train'])}; "
        f"test: x {tuple(shapes['x_test'])} y {tuple(shapes['y_test'])}; dtype {info['dtype']}"
    )
    if info.get("vocabulary_size"):
        console.print(
            f"vocabulary: {info['vocabulary_size']} tokens (sha256 {info['vocabulary_sha256']})"
        )
    if info.get("clients"):
        clients = info["clients"]
        sizes = ", ".join(f"{c['name']} {c['train']}/{c['test']}" for c in clients[:10])
        more = f", ... ({len(clients)} in all)" if len(clients) > 10 else ""
        console.print(
            f"{len(clients)} clients (train/test): {sizes}{more}; "
            f"global test set: {info['global_test']}"
        )
    table = Table("class", "name", "train", "test", title=f"{info['num_classes']} classes")
    names = info["class_names"] or [""] * info["num_classes"]
    counts = info["class_counts"]
    for c in range(info["num_classes"]):
        table.add_row(str(c), names[c], str(counts["train"][c]), str(counts["test"][c]))
    console.print(table)


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="Dataset name, e.g. fashion-mnist.")],
    cache_dir: Annotated[
        Path | None, typer.Option(help="Cache root (default: user cache).")
    ] = None,
    url_base: Annotated[str | None, typer.Option(help="Mirror to download from.")] = None,
) -> None:
    """Download a dataset into the cache and verify it."""
    from fedmoe.data import fetch_dataset

    result = fetch_dataset(name, cache_dir, url_base)
    console.print(result.message)


@app.command("partition")
def partition_cmd(
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "fashion-mnist",
    scheme: Annotated[str, typer.Option(help="majority, dirichlet, iid or shards.")] = "majority",
    p: Annotated[float, typer.Option(help="Majority-class fraction (majority).")] = 0.8,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration (dirichlet).")] = 0.5,
    classes_per_client: Annotated[int, typer.Option(help="Classes per client (shards).")] = 2,
    clients: Annotated[int, typer.Option(help="Number of clients.")] = 100,
    train: Annotated[int, typer.Option(help="Train samples per client.")] = 100,
    val: Annotated[int, typer.Option(help="Validation samples per client.")] = 200,
    test: Annotated[int, typer.Option(help="Local-test samples per client.")] = 200,
    overlap: Annotated[
        bool, typer.Option("--overlap/--disjoint", help="Majority pairs shared or disjoint.")
    ] = True,
    opt_out: Annotated[float, typer.Option(help="Fraction of clients opting out.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    data_dir: Annotated[Path | None, typer.Option(help="Look for the dataset here first.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    indices: Annotated[
        bool, typer.Option("--indices", help="Include index arrays (JSON).")
    ] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG of the label distribution.")
    ] = None,
) -> None:
    """Split a dataset among clients and show each client's label mix."""
    from fedmoe.data import load_dataset
    from fedmoe.data.partition import make_partition, partition_to_json
    from fedmoe.experiment.config import PartitionConfig, Scheme, check_choice
    from fedmoe.experiment.prepare import partition_spec

    check_choice("--scheme", scheme, typing.get_args(Scheme))
    section = PartitionConfig(
        scheme=typing.cast(Scheme, scheme),
        clients=clients,
        train=train,
        val=val,
        test=test,
        p=p,
        overlap=overlap,
        alpha=alpha,
        classes_per_client=classes_per_client,
        opt_out=opt_out,
    )
    ds = load_dataset(dataset, data_dir)
    part = make_partition(
        partition_spec(section), ds.y_train, ds.y_test, ds.num_classes, seed, opt_out
    )
    if plot is not None:
        from fedmoe.data.plot import plot_partition

        plot_partition(part, ds.y_train, ds.num_classes, plot)
    summary = partition_to_json(
        part, ds.y_train, ds.y_test, ds.num_classes, include_indices=indices
    )
    if as_json:
        _print_json(summary)
        return
    title = f"{dataset}: {part.scheme} {dict(part.params)}"
    table = Table(
        "client", "majority", "opt-out", "train counts", "val counts", "test counts", title=title
    )
    for c in summary["clients"]:
        counts = c["counts"]
        table.add_row(
            str(c["id"]),
            ",".join(map(str, c["majority"])) or "-",
            "yes" if c["opt_out"] else "",
            " ".join(map(str, counts["train"])),
            " ".join(map(str, counts["val"])),
            " ".join(map(str, counts["test"])),
        )
    console.print(table)
    if plot is not None:
        console.print(f"plot written to {plot}")


Threads = Annotated[
    int | None,
    typer.Option(
        help="Torch threads for this process (default: the cores free now, measured at "
        "start); with several processes on one machine give each 1."
    ),
]

Workers = Annotated[
    int | None,
    typer.Option(
        help="Worker processes (one torch thread each) that split the clients of the "
        "personalisation and evaluation stages, with the same results as one process "
        "(default: $FEDMOE_WORKERS, else the cores free now; 1: no workers)."
    ),
]


def _set_threads(threads: int | None, free: int | None = None) -> None:
    """Apply ``--threads`` (refusing a count below 1); without it, ``free`` cores."""
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    chosen = threads if threads is not None else free
    if chosen is None:
        return
    import torch

    torch.set_num_threads(chosen)


def _workers(workers: int | None, free: int) -> int:
    """``--workers``, else ``$FEDMOE_WORKERS``, else ``free``."""
    if workers is None:
        env = os.environ.get("FEDMOE_WORKERS", "")
        if env:
            try:
                workers = int(env)
            except ValueError:
                raise ConfigError(f"FEDMOE_WORKERS must be a whole number, got {env!r}") from None
        else:
            workers = free
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    return workers


def _free_cores(quiet: bool) -> int:
    """The cores free now; says so (unless ``quiet``) when other work holds some."""
    from fedmoe import cores

    free, allowed = cores.free(), len(cores.allowed())
    if free < allowed and not quiet:
        console.print(
            f"[dim]fedmoe: {free} of {allowed} cores free (other processes hold the rest); "
            f"threads and workers sized to {free}[/dim]"
        )
    return free


@app.command("run")
def run_cmd(
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    preset: Annotated[str | None, typer.Option(help=f"Start from a preset: {_PRESETS}.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override: section.key=value.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run directory: config.toml, checkpoints, results.json/md, rounds.csv."),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Finish the interrupted run in this directory.")
    ] = None,
    threads: Threads = None,
    workers: Workers = None,
    ray: Annotated[
        str | None,
        typer.Option(
            metavar="ADDRESS",
            help="Make the workers Ray actors (one CPU each; --workers of them, default one "
            "per CPU of the cluster): 'local' starts a Ray on this machine, else a "
            "cluster's address (auto, ray://HOST:10001).",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Run the configured methods (default: FedAvg, Local, FT and MoE) on every client."""
    from fedmoe.engine import parallel
    from fedmoe.experiment import rundir
    from fedmoe.experiment.results import results_table
    from fedmoe.experiment.run import run_experiment
    from fedmoe.progress import progress_bars

    if resume is not None and (config or preset or set_ or out):
        raise ConfigError(
            "--resume DIR takes the run's own config; drop --config/--preset/--set/--out"
        )
    cfg = None if resume is not None else _config(config, preset, set_ or [])
    free = _free_cores(quiet) if threads is None or (workers is None and ray is None) else 1
    _set_threads(threads, free)
    if ray is not None and workers is not None and workers < 2:
        raise ConfigError(f"--ray needs at least 2 workers, got --workers {workers}")
    pool = (
        parallel.workers(workers, ray)
        if ray is not None
        else parallel.workers(_workers(workers, free))
    )
    with progress_bars(console, enabled=not quiet) as bars, pool:
        if resume is not None:
            results = rundir.resume(resume, bars)
        elif out is not None:
            assert cfg is not None
            results = rundir.run_in(out, cfg, bars)
        else:
            assert cfg is not None
            results = run_experiment(cfg, bars)
    console.print(results_table(results))
    where = resume or out
    if where is not None:
        from fedmoe.report.run_plots import write_run_plots

        plots = write_run_plots(results, where / "plots")
        console.print(
            f"results written to {where}/results.json, results.md, rounds.csv, config.toml; "
            f"plots: {', '.join(p.name for p in plots)} in {where}/plots"
        )


def _config(config: Path | None, preset: str | None, overrides: list[str]) -> ExperimentConfig:
    """A validated config: a preset, then a TOML file, then ``--set`` overrides."""
    from fedmoe.experiment import config as cfgmod
    from fedmoe.experiment.presets import compose

    user = cfgmod.load(config) if config is not None else {}
    return cfgmod.from_dict(compose(preset, user, overrides))


@app.command("sweep")
def sweep_cmd(
    grid: Annotated[
        list[str],
        typer.Option(help="Axis key=v1,v2,... (p, opt_out, alpha or any config key); repeatable."),
    ],
    out: Annotated[Path, typer.Option(help="Sweep directory (runs/, sweep.csv, report.md).")],
    config: Annotated[Path | None, typer.Option(help="Base TOML config file.")] = None,
    preset: Annotated[str | None, typer.Option(help=f"Base preset: {_PRESETS}.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Base override: section.key=value.")
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per cell (base seed + 0, 1, ...).")] = 1,
    threads: Threads = None,
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes per run for its personalisation and evaluation (as for "
            "'fedmoe run'); default 1, since sweeps run side by side as processes."
        ),
    ] = 1,
    ray: Annotated[
        str | None,
        typer.Option(
            metavar="ADDRESS",
            help="Run each run as a Ray task of one CPU: 'local' starts a Ray on this "
            "machine's cores; else a cluster's address (auto, ray://HOST:10001), whose "
            "nodes must all mount --out at the same path.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Run a grid of configs x seeds; finished runs are skipped, interrupted ones resume.
    Several workers may share one --out: each skips the runs another is running."""
    from fedmoe.engine import parallel
    from fedmoe.experiment import config as cfgmod
    from fedmoe.experiment.presets import compose
    from fedmoe.progress import progress_bars
    from fedmoe.report import write_report
    from fedmoe.sweep.runner import parse_axis, run_sweep

    user = cfgmod.load(config) if config is not None else {}
    base = compose(preset, user, set_ or [])
    axes = [parse_axis(item) for item in grid]
    if ray is not None and workers != 1:
        raise ConfigError("--workers is for local sweeps: on Ray each run is a one-CPU task")
    _set_threads(threads, _free_cores(quiet) if threads is None else None)
    with progress_bars(console, enabled=not quiet) as bars, parallel.workers(_workers(workers, 1)):
        path = run_sweep(base, axes, seeds, out, bars, log=console.print, ray=ray)
    if path is None:  # other workers hold every run: the last of them writes the table
        console.print("no run has finished yet: no sweep table or report written")
        return
    console.print(f"sweep table written to {path}")
    console.print(f"report written to {write_report(out)}")


@app.command("report")
def report_cmd(
    directory: Annotated[Path, typer.Argument(help="A sweep directory (with sweep.csv).")],
) -> None:
    """Write DIR/report.md and DIR/plots/*.png from a sweep's results."""
    from fedmoe.report import write_report

    console.print(f"report written to {write_report(directory)}")


@app.command("merge")
def merge_cmd(
    out: Annotated[Path, typer.Argument(help="The merged sweep directory to write.")],
    sweeps: Annotated[
        list[Path], typer.Argument(help="Sweep directories of the same grid and seeds.")
    ],
) -> None:
    """Merge sweeps that ran other methods over the same grid and seeds into OUT
    (OUT/sweep.csv points at their runs), then write OUT's report: one leaderboard."""
    from fedmoe.report import write_report
    from fedmoe.sweep.merge import merge

    console.print(f"sweep table written to {merge(out, sweeps)}")
    console.print(f"report written to {write_report(out)}")


def _fail(message: str, code: int) -> NoReturn:
    line = " ".join(str(message).split())
    sys.stderr.write(f"fedmoe: error: {line}\n")
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning every user error into one line and a status."""
    try:
        app(args=argv, standalone_mode=False)
    except FedmoeError as exc:
        _fail(str(exc), 1)
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except Exception as exc:
        # Click's exceptions (typer vendors click, so match by interface, not by class).
        format_message = getattr(exc, "format_message", None)
        if not callable(format_message):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.stdout.write(str(format_message()) + "\n")
            raise SystemExit(0) from None
        _fail(str(format_message()), int(getattr(exc, "exit_code", 1)))
