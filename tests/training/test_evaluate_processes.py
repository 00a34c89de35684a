"""`evaluate` under torchrun: two gloo processes write exactly what one process writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval.robustness.ers import ATTACK_KEYS
from serve.cli import main
from tests.support.ports import free_port
from tests.support.training_runs import write_idx

TINY = ["--batch-pairs", "8", "--train-subset", "32", "--val-subset", "16", "--device", "cpu", "--num-workers", "0",
        "--max-steps", "2", "--pgd-steps", "1"]
EVALUATE = ["--max-queries", "20", "--batch-size", "4", "--steps", "2", "--protocols", "rob28,strong", "--seed", "3",
            "--no-progress", "--device", "cpu"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(processes: int, *args: str) -> list[str]:
    """The command line that runs `robust-retrieval ARGS` in `processes` local processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(processes),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "serve.cli", *args]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """HM[S,gLGA] trained for two iterations on a tiny IDX set (48 test images)."""
    root = tmp_path_factory.mktemp("evaluate-processes")
    data = write_idx(root / "data")
    out = root / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(sys, "argv", ["robust-retrieval", "train", "--out", str(out), "--dataset", "mnist",
                                          "--data-root", str(data), "--method", "HM[S,gLGA]", *TINY])
        with pytest.raises(SystemExit) as exit_info:
            main()
    assert exit_info.value.code == 0
    return out


def evaluated(run: Path, out: Path, processes: int) -> dict[str, dict]:
    """robustness.json and robustness-strong.json of one evaluate run in `processes` processes."""
    args = ["evaluate", str(run), *EVALUATE, "--out", str(out)]
    command = torchrun(processes, *args) if processes > 1 else [sys.executable, "-m", "serve.cli", *args]
    done = subprocess.run(command, env=ONE_THREAD, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {stem: json.loads((out / f"{stem}.json").read_text()) for stem in ("robustness", "robustness-strong")}


@pytest.mark.slow
def test_two_processes_give_every_query_the_values_one_process_gives(run, tmp_path) -> None:
    """Targets and restart noise follow the queries, not the process or its batch position; rank 0 gathers in order."""
    one, two = evaluated(run, tmp_path / "one", 1), evaluated(run, tmp_path / "two", 2)
    for stem in one:
        assert two[stem]["config"]["processes"] == 2 and one[stem]["config"]["processes"] == 1
        assert two[stem]["config"]["query_indices"] == one[stem]["config"]["query_indices"]
        for key in ATTACK_KEYS:
            assert len(two[stem]["per_query"][key]) == 20
            assert two[stem]["per_query"][key] == one[stem]["per_query"][key], (stem, key)
        assert two[stem]["attacks"] == one[stem]["attacks"]
        assert two[stem]["ERS"] == one[stem]["ERS"] and two[stem]["ERS_ci95"] == one[stem]["ERS_ci95"]
        assert two[stem]["benign"] == one[stem]["benign"]
    summary = json.loads((tmp_path / "two" / "robustness-summary.json").read_text())
    assert set(summary["protocols"]) == {"rob28", "strong"}
