"""`train > log 2>&1`: with output going to a file, training writes a plain progress line at a steady interval
(step, elapsed, ETA, loss) instead of a bar that would only appear at the end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval.progress import INTERVAL_ENV
from tests.support.training_runs import write_idx

pytestmark = pytest.mark.slow

LINE = re.compile(r"train  (\d+)/\d+  \(\d+%\)  loss (-|\d\.\d{4})  H \S+  \S+ img/s  "
                  r"elapsed 0:00:(\d\d)  ETA 0:00:(\d\d)")


def test_train_into_a_log_file_writes_progress_lines_while_it_trains(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with open(log, "w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "serve.cli", "train", "--dataset", "mnist", "--data-root",
             str(write_idx(tmp_path / "data")), "--method", "N/A[R]", "--batch-pairs", "8", "--val-subset", "16",
             "--device", "cpu", "--num-workers", "0", "--epochs", "1000", "--log-every", "1",
             "--time-budget", "2", "--out", str(tmp_path / "run")],
            stdout=out, stderr=subprocess.STDOUT, env=os.environ | {INTERVAL_ENV: "0.25"}, timeout=300,
        )
    text = log.read_text()
    assert done.returncode == 0, text
    lines = text.splitlines()
    progress = [(i, LINE.fullmatch(line)) for i, line in enumerate(lines) if line.startswith("train ")]
    assert len(progress) >= 4 and all(match for _, match in progress), text
    steps = [int(match[1]) for _, match in progress]
    assert steps == sorted(steps) and steps[-1] > 0, text
    assert any(match[2] != "-" for _, match in progress), text  # the loss, once the first iterations are logged
    assert all(int(match[4]) <= 2 for _, match in progress), text  # ETA: the 2 s budget, not 1000 epochs
    final = next(i for i, line in enumerate(lines) if line.startswith("final:"))
    assert progress[0][0] < final and "\x1b" not in text, text
