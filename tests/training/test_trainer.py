"""The training loop: run directory contents, exact resume, checkpoints, collapse warning and 2-process DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

from retrieval.errors import UserError
from tests.support.ports import free_port
from tests.support.training_runs import tiny_config, write_idx
from training.checkpoint import KEYS, load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.defenses.config import DefenseConfig
from training.trainer import train
from training.validation import mean_pairwise_cosine, validate

QUIET = Console(quiet=True)
FRACTIONS = ("R@1", "R@2", "mAP", "mAP@R", "NMI")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("idx"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_root) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run") / "run"
    metrics = train(tiny_config(out, data_root, max_steps=6, train_subset=32, val_subset=40), console=QUIET)
    return out, metrics


@pytest.mark.slow
def test_run_directory_holds_config_log_checkpoint_metrics_and_curves(finished_run) -> None:
    out, metrics = finished_run
    assert TrainConfig.from_dict(json.loads((out / "config.json").read_text())).max_steps == 6
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert all(0.0 <= metrics[k] <= 1.0 for k in FRACTIONS)
    assert metrics["steps"] == 6 and metrics["epochs"] == 1.5  # 32 anchors = 4 batches of 8 pairs per epoch
    assert metrics["method"] == "N/A[R]" and metrics["paper_cost"] == 1 and metrics["collapsed"] is False
    assert metrics["image_passes_per_iter"] == 16.0 and metrics["train_seconds"] > 0
    assert metrics["seconds_per_epoch"] == pytest.approx(metrics["train_seconds"] / 1.5)
    assert metrics["torch_threads"] == torch.get_num_threads()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [2, 4, 6]
    assert [(r["epoch"], r["step"]) for r in records if r["kind"] == "val"] == [(1.0, 4), (1.5, 6)]
    assert {"loss", "hardness_source", "images_per_s"} <= set(records[0])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (state["position"]["epoch"], state["position"]["batch"], state["position"]["step"]) == (1, 2, 6)


@pytest.mark.slow
def test_a_second_run_into_the_same_directory_needs_resume(finished_run, data_root) -> None:
    out, _ = finished_run
    with pytest.raises(UserError, match="--resume"):
        train(tiny_config(out, data_root, max_steps=2), console=QUIET)


@pytest.mark.slow
@pytest.mark.parametrize(
    "defense",
    [DefenseConfig(), DefenseConfig(defense="hm", source="softhard", destination="lga", ics=0.5, pgd_steps=2)],
    ids=["regular", "HM[S,gLGA]&ICS"],
)
def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path, data_root, defense) -> None:
    def run(out: Path, steps: int, resume: bool = False) -> None:
        cfg = tiny_config(out, data_root, max_steps=steps, train_subset=32, val_subset=16, defense=defense)
        train(cfg, resume=resume, console=QUIET)

    straight, split = tmp_path / "straight", tmp_path / "split"
    run(straight, 6)
    run(split, 3)  # stops inside the first epoch (4 batches), resumes across the epoch boundary
    run(split, 6, resume=True)

    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(split / "checkpoint.pt")
    assert a["position"]["step"] == b["position"]["step"] == 6
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["processes"][0]["defense"] == b["processes"][0]["defense"]
    assert torch.equal(a["processes"][0]["rng"]["defense"], b["processes"][0]["rng"]["defense"])
    steps = [json.loads(line)["step"] for line in (split / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len([s for s in steps if s == 2]) == 1  # no records repeated after resume


def test_truncated_or_foreign_checkpoints_are_user_errors(tmp_path) -> None:
    save_checkpoint(tmp_path / "full.pt", {key: {} for key in KEYS if key != "format"})
    assert load_checkpoint(tmp_path / "full.pt")["format"] == 1
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a robust-retrieval training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(UserError, match="nothing to resume"):
        load_checkpoint(tmp_path / "missing.pt")


class Constant(nn.Module):
    """Maps every image to the same unit vector: the collapsed extreme."""

    def __init__(self) -> None:
        super().__init__()
        self.direction = nn.Parameter(torch.ones(8) / 8**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.direction.expand(x.shape[0], -1)


def test_collapsed_embeddings_are_flagged() -> None:
    images, labels = torch.rand(40, 1, 28, 28), torch.arange(40) % 4
    metrics = validate(Constant(), images, labels, batch_size=16)
    assert metrics["collapsed"] is True and metrics["mean_cosine"] == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.eye(5)) == 0.0


@pytest.mark.slow
def test_two_ddp_processes_end_with_identical_weights(tmp_path, data_root) -> None:
    out = tmp_path / "ddp"
    cfg = tiny_config(out, data_root, max_steps=3, val_subset=16, epochs=1)
    helper = Path(__file__).parents[1] / "support" / "ddp_train.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(helper),
               json.dumps(cfg.to_dict())]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    for name, tensor in rank0.items():
        assert torch.equal(tensor, rank1[name]), name
        assert torch.equal(tensor, saved["model"][name]), name
    assert len(saved["processes"]) == 2
    assert not torch.equal(saved["processes"][0]["rng"]["defense"], saved["processes"][1]["rng"]["defense"])
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 2


@pytest.mark.parametrize("preset", ["quick", "standard"])
def test_a_preset_run_gives_the_same_model_twice(tmp_path, data_root, preset) -> None:
    """Presets stop at an iteration count, not on the clock: the same seed gives the same weights on any machine whose
    float arithmetic matches (the CPU kind and torch's thread count, which metrics.json records)."""
    from training.config import build_config

    def run(out: Path) -> dict:
        options = {"out": str(out), "dataset": "mnist", "data_root": str(data_root), "max_steps": 3,
                   "batch_pairs": 8, "train_subset": 32, "val_subset": 16, "num_workers": 0, "val_attack_queries": 4}
        cfg = build_config(options, {"pgd_steps": 2}, preset=preset)
        assert cfg.time_budget is None
        train(cfg, console=QUIET)
        return load_checkpoint(out / "checkpoint.pt")["model"]

    first, second = run(tmp_path / "a"), run(tmp_path / "b")
    assert all(torch.equal(tensor, second[name]) for name, tensor in first.items())
