"""SIGKILL in the middle of `train`, then `--resume`: the run ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.fashion_mnist]

CLI = [sys.executable, "-m", "serve.cli"]
TRAIN = [
    "train", "--dataset", "fashion-mnist", "--model", "c2f2", "--method", "HM[S,gLGA]&ICS", "--pgd-steps", "2",
    "--batch-pairs", "16", "--train-subset", "640", "--epochs", "1", "--val-subset", "300",
    "--checkpoint-every", "4", "--device", "cpu",
]
BENIGN = ("R@1", "R@2", "mAP", "mAP@R", "NMI")


def train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *TRAIN, "--out", str(out), *extra], capture_output=True, text=True, timeout=300)


def test_sigkill_during_training_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    assert train(straight).returncode == 0

    killed = tmp_path / "killed"
    process = subprocess.Popen([*CLI, *TRAIN, "--out", str(killed)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists(), "the run finished before it could be killed"

    resumed = train(killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert {k: a[k] for k in BENIGN} == {k: b[k] for k in BENIGN}
    assert a["steps"] == b["steps"] == 40
    wa = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    wb = torch.load(killed / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
