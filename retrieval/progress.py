"""The one look of the command-line progress bars (evaluate's attacks, index's embedding, train's iterations):
what runs, bar, done/total, the caller's own columns, time elapsed and time left.

On a terminal the bar redraws in place. Where the bar's stream is not a terminal (a log file, a pipe, CI) a redrawn
bar would print nothing until the end, so the same columns are written instead as one plain line every
RR_PROGRESS_INTERVAL_S seconds (default 30) and once more when the bar stops:

    train  120/9380  (1%)  loss 0.2150  H -0.0312  1,024 img/s  elapsed 0:01:00  ETA 0:07:00

Time left is the rate since the bar started (a resumed run's own) applied to what remains, capped by a time limit
(a training time budget) when there is one.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from datetime import timedelta
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from retrieval.errors import UserError

INTERVAL_ENV = "RR_PROGRESS_INTERVAL_S"
DEFAULT_INTERVAL_S = 30.0


def progress_bar(
    *columns: ProgressColumn,
    console: Console | None = None,
    enabled: bool = True,
    time_limit_s: float | None = None,
) -> Progress:
    """A bar with the common columns around `columns`; on stderr unless a console is given, so stdout keeps
    only results. `time_limit_s`: the work stops after that many seconds at the latest (a training time budget),
    which caps the time left shown."""
    console = console or Console(stderr=True)
    shown = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), *columns,
             TimeElapsedColumn(), TimeLeftColumn(time_limit_s))
    if enabled and not _redraws(console):
        return PlainLines(*shown, console=console, interval_s=interval_from_env())
    return Bar(*shown, console=console, disable=not enabled)


@contextlib.contextmanager
def tracked(
    label: str, total: int, *columns: ProgressColumn, console: Console | None = None, enabled: bool = True
) -> Iterator[Callable[..., None]]:
    """A running bar over `total` units; yields advance(units=1, description=None), which may relabel it."""
    with progress_bar(*columns, console=console, enabled=enabled) as bar:
        task = bar.add_task(label, total=total)
        yield lambda units=1, description=None: bar.update(task, advance=units, description=description)


def interval_from_env() -> float:
    """Seconds between plain progress lines: RR_PROGRESS_INTERVAL_S, else 30."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise UserError(f"{INTERVAL_ENV} must be a positive number of seconds, not {raw!r}")
    return seconds


class TimeLeftColumn(ProgressColumn):
    """Time left at the rate since the bar started, capped by the time limit when there is one."""

    def __init__(self, time_limit_s: float | None = None) -> None:
        super().__init__()
        self.time_limit_s = time_limit_s

    def render(self, task: Task) -> Text:
        left = time_left(task, self.time_limit_s)
        shown = "-:--:--" if left is None else str(timedelta(seconds=math.ceil(left)))
        return Text(shown, style="progress.remaining")


def time_left(task: Task, time_limit_s: float | None = None) -> float | None:
    """Seconds until `task` completes (None while unknown): the units done since the bar started, at the rate
    measured when the count last changed, less the time since (a bar updated every few iterations counts down)."""
    elapsed = task.elapsed or 0.0
    by_limit = None if time_limit_s is None else max(0.0, time_limit_s - elapsed)
    done = task.completed - task.fields.get("completed_at_start", 0)
    counted_at = task.fields.get("counted_at", elapsed)
    if task.total is None or done <= 0 or counted_at <= 0:
        return by_limit
    by_rate = max(0.0, (task.total - task.completed) * counted_at / done - (elapsed - counted_at))
    return by_rate if by_limit is None else min(by_rate, by_limit)


class Bar(Progress):
    """rich's Progress, remembering where each task began (so that a resumed run's rate is its own) and when its
    count last changed."""

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0, completed: int = 0,
                 visible: bool = True, **fields) -> TaskID:
        return super().add_task(description, start, total, completed, visible, completed_at_start=completed, **fields)

    def update(self, task_id: TaskID, **changes) -> None:
        with self._lock:
            task = self._tasks[task_id]
            before = task.completed
            super().update(task_id, **changes)
            if task.completed != before:
                task.fields["counted_at"] = task.elapsed


class PlainLines(Bar):
    """The bar's columns as one plain text line per task, every `interval_s` seconds and when it stops."""

    def __init__(self, *columns: ProgressColumn, console: Console, interval_s: float) -> None:
        super().__init__(*columns, console=console, disable=True)  # no live display: these lines replace it
        self.interval_s = interval_s
        self._stopped = threading.Event()
        self._writer: threading.Thread | None = None
        self._written: list[str] = []

    def start(self) -> None:
        if self._writer is None:
            self._stopped.clear()
            self._writer = threading.Thread(target=self._write_every_interval, name="progress-lines", daemon=True)
            self._writer.start()

    def stop(self) -> None:
        if self._writer is not None:
            self._stopped.set()
            self._writer.join()
            self._writer = None
            if self.lines() != self._written:  # the last interval's lines may already say where it ended
                self.write_lines()

    def lines(self) -> list[str]:
        with self._lock:
            return [self._line(task) for task in self.tasks if task.visible]

    def write_lines(self) -> None:
        self._written = self.lines()
        for line in self._written:
            self.console.out(line, highlight=False)

    def _write_every_interval(self) -> None:
        while not self._stopped.wait(self.interval_s):
            self.write_lines()

    def _line(self, task: Task) -> str:
        parts = []
        for column in self.columns:
            if isinstance(column, BarColumn):
                continue
            shown = column.render(task)
            text = (shown.plain if isinstance(shown, Text) else str(shown)).strip()
            if isinstance(column, MofNCompleteColumn) and task.total:
                text += f"  ({100 * task.completed / task.total:.0f}%)"
            elif isinstance(column, TimeElapsedColumn):
                text = f"elapsed {text}"
            elif isinstance(column, TimeLeftColumn):
                text = f"ETA {text}"
            parts.append(text)
        return "  ".join(part for part in parts if part)


def _redraws(console: Console) -> bool:
    """Whether a live bar can redraw in place on this console (a terminal that is not dumb, or Jupyter)."""
    return (console.is_terminal and not console.is_dumb_terminal) or console.is_jupyter
