"""The one look of the command-line progress bars (evaluate's attacks, index's embedding, train's iterations):
what runs, bar, done/total, the caller's own columns, time elapsed and time left."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(*columns: ProgressColumn, console: Console | None = None, enabled: bool = True) -> Progress:
    """A bar with the common columns around `columns`; on stderr unless a console is given, so stdout keeps
    only results."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), *columns,
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=console or Console(stderr=True), disable=not enabled,
    )


@contextlib.contextmanager
def tracked(
    label: str, total: int, *columns: ProgressColumn, console: Console | None = None, enabled: bool = True
) -> Iterator[Callable[..., None]]:
    """A running bar over `total` units; yields advance(units=1, description=None), which may relabel it."""
    with progress_bar(*columns, console=console, enabled=enabled) as bar:
        task = bar.add_task(label, total=total)
        yield lambda units=1, description=None: bar.update(task, advance=units, description=description)
