"""The run's log.jsonl and its live progress bar.

log.jsonl is an append-only stream (one JSON object per line: "train" records averaged over log_every iterations,
"val" records per validation). Lines are flushed as written; on --resume the records after the checkpoint's
step are dropped (atomically) so the log matches the resumed run exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import TextColumn

from retrieval.atomic import atomic_write_text
from retrieval.progress import progress_bar


class RunLog:
    def __init__(self, path: Path, *, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, allow_nan=True) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """All complete records (a torn last line from a crash is skipped)."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def truncate_after(self, step: int) -> None:
        """Keep only the records up to `step`: where a (resumed or restarted) run begins."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in self.records() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


class StatsWindow:
    """Sums of per-iteration stats (and training images seen) between two log records."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.images = 0

    def add(self, stats: dict[str, float], *, images: int) -> None:
        for key, value in stats.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1
        self.images += images

    def means(self) -> dict[str, float]:
        """Mean of each stat over the window; starts a new window."""
        means = {k: v / self.count for k, v in self.sums.items()} if self.count else {}
        self.sums, self.count, self.images = {}, 0, 0
        return means


class TrainProgress:
    """A rich progress bar over the run's iterations showing loss, mean hardness and images/s (plain lines at an
    interval where the console is not a terminal); `time_limit_s` is what is left of a time budget."""

    def __init__(self, total: int, completed: int, *, console: Console, enabled: bool,
                 time_limit_s: float | None = None):
        self.enabled = enabled
        self._progress = progress_bar(
            TextColumn("loss {task.fields[loss]}  H {task.fields[hardness]}  {task.fields[speed]} img/s"),
            console=console, enabled=enabled, time_limit_s=time_limit_s,
        )
        self._task = self._progress.add_task(
            "train", total=total, completed=completed, loss="-", hardness="-", speed="-"
        )

    def __enter__(self) -> "TrainProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def count(self, completed: int) -> None:
        """The iterations done, without new stats (no host sync)."""
        self._progress.update(self._task, completed=completed)

    def update(self, completed: int, stats: dict[str, float], images_per_s: float) -> None:
        self._progress.update(
            self._task,
            completed=completed,
            loss=_fmt(stats.get("loss")),
            hardness=_fmt(stats.get("hardness")),
            speed=f"{images_per_s:,.0f}",
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"
