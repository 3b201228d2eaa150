"""Rich progress bars for the experiment's phases (a UI concern, kept out of the engine)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedmoe.engine.train import ProgressFn
from fedmoe.methods.base import ProgressFactory


@contextmanager
def progress_bars(console: Console, enabled: bool = True) -> Iterator[ProgressFactory | None]:
    """Yield a factory of phase bars (``None`` when disabled or not a terminal)."""
    if not enabled:
        yield None
        return
    columns = (
        TextColumn("{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[active]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:

        def factory(description: str, total: int) -> ProgressFn:
            task = progress.add_task(description, total=total, active="")

            def update(done: int, active: int) -> None:
                progress.update(task, completed=done, active=f"{active} active")

            return update

        yield factory
