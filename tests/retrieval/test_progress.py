"""The one progress-bar look shared by evaluate, index and train (retrieval.progress): a live bar on a terminal,
plain lines at an interval anywhere else (a log file, a pipe, CI)."""

from __future__ import annotations

import io
import re
import time

import pytest
import torch
from rich.console import Console
from rich.progress import TextColumn
from torch import nn

from retrieval.errors import UserError
from retrieval.progress import INTERVAL_ENV, Bar, progress_bar, time_left, tracked
from retrieval.robustness.evaluation import evaluate_robustness
from training.runlog import TrainProgress


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=150, force_terminal=True), out


def log_file() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=150), out


@pytest.mark.parametrize("console", [terminal, log_file])
def test_a_bar_counts_units_relabels_and_shows_the_caller_columns(console):
    screen, out = console()
    with tracked("attacks", 3, TextColumn("extra!"), console=screen) as advance:
        advance(2)
        advance(description="CA+ batch 1/2")
    last_frame = out.getvalue().rpartition("attacks")[2]
    assert "CA+ batch 1/2" in last_frame and "3/3" in last_frame and "extra!" in last_frame


@pytest.mark.parametrize("console", [terminal, log_file])
def test_a_disabled_bar_prints_nothing(console):
    screen, out = console()
    with tracked("attacks", 3, console=screen, enabled=False) as advance:
        advance()
    assert out.getvalue() == ""


def test_off_a_terminal_the_bar_writes_a_plain_line_every_interval_and_when_it_stops(monkeypatch):
    """A redrawn bar would print nothing into a log until the end; plain lines show the work going on."""
    monkeypatch.setenv(INTERVAL_ENV, "0.05")
    screen, out = log_file()
    with tracked("embedding", 10, TextColumn("{task.completed:.0f} images"), console=screen) as advance:
        advance(4)
        time.sleep(0.3)
        during = out.getvalue().splitlines()
        advance(6)
    lines = out.getvalue().splitlines()
    assert len(during) >= 3 and set(during) == {during[0]}  # steady lines while nothing moved
    assert re.fullmatch(r"embedding  4/10  \(40%\)  4 images  elapsed 0:00:00  ETA 0:00:\d\d", during[0])
    assert lines[-1].startswith("embedding  10/10  (100%)  10 images") and lines[-1].endswith("ETA 0:00:00")
    assert "\x1b" not in out.getvalue()  # no terminal control codes in a log


def test_the_end_is_not_written_twice_when_the_last_interval_already_said_it(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "60")
    screen, out = log_file()
    with progress_bar(console=screen) as bar:
        bar.add_task("index", total=2, completed=2)
        bar.write_lines()  # as the interval's writer does
    assert len(out.getvalue().splitlines()) == 1


def test_the_interval_comes_from_the_environment_and_must_be_positive(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert progress_bar(console=log_file()[0]).interval_s == 2.5
    monkeypatch.delenv(INTERVAL_ENV)
    assert progress_bar(console=log_file()[0]).interval_s == 30
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(UserError, match=INTERVAL_ENV):
            progress_bar(console=log_file()[0])


def test_time_left_is_the_rate_since_the_bar_started_counting_down_capped_by_a_time_limit():
    """A resumed run (starting at 20 of 100) counts only its own units; a time budget ends the run earlier."""
    now = [0.0]
    bar = Bar(get_time=lambda: now[0], disable=True)
    task_id = bar.add_task("train", total=100, completed=20)
    task = bar.tasks[0]
    assert time_left(task) is None and time_left(task, 50) == 50
    now[0] = 10.0
    bar.update(task_id, completed=30)  # 10 units in 10 s: 70 left at 1 unit/s
    assert time_left(task) == pytest.approx(70) and time_left(task, 50) == pytest.approx(40)
    assert time_left(task, 300) == pytest.approx(70)
    now[0] = 15.0  # no new count yet (a bar updated every few iterations): the time left still counts down
    assert time_left(task) == pytest.approx(65)


def test_evaluation_progress_goes_to_stderr_and_stdout_keeps_only_results(capsys):
    torch.manual_seed(0)
    images, labels = torch.rand(8, 1, 28, 28), torch.arange(8) % 2
    evaluate_robustness(nn.Sequential(nn.Flatten(), nn.Linear(784, 4)), images, labels, profile="rob28",
                        max_queries=4, steps=1, batch_size=4, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "9/9" in captured.err  # nine attacks, one batch


def test_training_bar_shows_iterations_loss_hardness_and_speed():
    screen, out = terminal()
    with TrainProgress(10, 2, console=screen, enabled=True) as bar:
        bar.update(5, {"loss": 0.25, "hardness": float("nan")}, 1234.5)
    line = out.getvalue()
    assert "train" in line and "5/10" in line and "loss 0.2500  H -  1,234 img/s" in line


def test_training_lines_count_every_iteration_and_keep_the_last_logged_stats(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "60")
    screen, out = log_file()
    with TrainProgress(10, 0, console=screen, enabled=True) as bar:
        bar.update(5, {"loss": 0.25}, 100.0)
        bar.count(7)  # iterations between two log records
    assert out.getvalue().startswith("train  7/10  (70%)  loss 0.2500  H -  100 img/s")
