"""The one progress-bar look shared by evaluate, index and train (retrieval.progress)."""

from __future__ import annotations

import io

import torch
from rich.console import Console
from rich.progress import TextColumn
from torch import nn

from retrieval.progress import tracked
from retrieval.robustness import evaluate_robustness
from training.runlog import TrainProgress


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=150), out


def test_a_bar_counts_units_relabels_and_shows_the_caller_columns():
    screen, out = console()
    with tracked("attacks", 3, TextColumn("extra!"), console=screen) as advance:
        advance(2)
        advance(description="CA+ batch 1/2")
    line = out.getvalue()
    assert "CA+ batch 1/2" in line and "3/3" in line and "extra!" in line and "attacks" not in line


def test_a_disabled_bar_prints_nothing():
    screen, out = console()
    with tracked("attacks", 3, console=screen, enabled=False) as advance:
        advance()
    assert out.getvalue() == ""


def test_evaluation_progress_goes_to_stderr_and_stdout_keeps_only_results(capsys):
    torch.manual_seed(0)
    images, labels = torch.rand(8, 1, 28, 28), torch.arange(8) % 2
    evaluate_robustness(nn.Sequential(nn.Flatten(), nn.Linear(784, 4)), images, labels, profile="rob28",
                        max_queries=4, steps=1, batch_size=4, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "9/9" in captured.err  # nine attacks, one batch


def test_training_bar_shows_iterations_loss_hardness_and_speed():
    screen, out = console()
    with TrainProgress(10, 2, console=screen, enabled=True) as bar:
        bar.update(5, {"loss": 0.25, "hardness": float("nan")}, 1234.5)
    line = out.getvalue()
    assert line.startswith("train") and "5/10" in line and "loss 0.2500  H -  1,234 img/s" in line
