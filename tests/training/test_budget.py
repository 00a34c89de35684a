"""Training at a wall-clock budget: the budget stop and resume, fine-tuning from --init, EST's BatchNorm mode and
the class-balanced validation subset."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import pytest
import torch
from rich.console import Console

from tests.support.training_runs import tiny_config, write_folder, write_idx
import training.trainer as trainer_module
from retrieval.datasets import load_dataset
from retrieval.errors import UserError
from retrieval import distributed
from training.checkpoint import load_checkpoint
from training.defenses.notation import parse_method
from training.trainer import Trainer, _validation_data, train

QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("idx"))


@pytest.fixture
def one_second_per_iteration(monkeypatch):
    """The trainer's clock advances exactly one second per training iteration and stands still otherwise."""
    clock = {"now": 0.0}
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    step = Trainer._step

    def timed_step(self, images, labels):
        step(self, images, labels)
        clock["now"] += 1.0

    monkeypatch.setattr(Trainer, "_step", timed_step)
    return clock


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoint.pt")["model"]


def test_budget_stops_after_the_crossing_iteration_and_resume_goes_on(tmp_path, data_root, one_second_per_iteration):
    def run(out: Path, budget: float, resume: bool = False) -> dict:
        cfg = tiny_config(out, data_root, epochs=50, train_subset=32, val_subset=16, time_budget=budget)
        return train(cfg, resume=resume, console=QUIET)

    stopped = run(tmp_path / "split", 3.5)
    assert (stopped["steps"], stopped["stopped_by"], stopped["budget_spent_s"]) == (4, "time_budget", 4.0)
    assert stopped["time_budget_s"] == 3.5 and stopped["image_passes"] == 4 * 16
    assert load_checkpoint(tmp_path / "split" / "checkpoint.pt")["position"]["step"] == 4

    again = run(tmp_path / "split", 3.5, resume=True)  # the budget is spent: nothing more to train
    assert again["steps"] == 4
    resumed = run(tmp_path / "split", 6.5, resume=True)
    straight = run(tmp_path / "straight", 6.5)
    assert resumed["steps"] == straight["steps"] == 7
    a, b = weights(tmp_path / "split"), weights(tmp_path / "straight")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_init_starts_from_the_run_and_its_seconds_count_against_the_budget(
    tmp_path, data_root, one_second_per_iteration
):
    base = tiny_config(tmp_path / "warm", data_root, train_subset=32, val_subset=16, max_steps=2)
    train(base, console=QUIET)
    fine = tiny_config(tmp_path / "fine", data_root, epochs=50, train_subset=32, val_subset=16, time_budget=5,
                       init=str(tmp_path / "warm"), defense=parse_method("HM[S,gLGA]&ICS"))
    processes = distributed.start("cpu")
    started = Trainer(fine, processes, resume=False, console=QUIET)
    warm = weights(tmp_path / "warm")
    assert all(torch.equal(started.model.state_dict()[k], warm[k]) for k in warm)

    metrics = train(fine, console=QUIET)
    assert (metrics["init_seconds"], metrics["steps"], metrics["budget_spent_s"]) == (2.0, 3, 5.0)
    assert metrics["init"] == str(tmp_path / "warm") and metrics["init_image_passes"] == 2 * 16

    wrong = dataclasses.replace(fine, out=str(tmp_path / "wrong"), embedding_dim=32)
    with pytest.raises(UserError, match="--init .* 512-d"):
        train(wrong, console=QUIET)


@pytest.mark.slow
@pytest.mark.parametrize("method, trains", [("EST[R]", True), ("HM[S,gLGA]", False)])
def test_est_trains_resnet_batchnorm_on_batch_statistics(tmp_path, method, trains):
    """The published EST baseline updates BatchNorm running statistics; HM (and the others) keep them frozen."""
    root = write_folder(tmp_path / "images", per_class=2, size=32)
    cfg = tiny_config(tmp_path / "run", root, dataset="folder", model="resnet18", pretrained=False, batch_pairs=4,
                      max_steps=1, val_subset=None, defense=dataclasses.replace(parse_method(method), pgd_steps=1))
    trainer = Trainer(cfg, distributed.start("cpu"), resume=False, console=QUIET)
    assert trainer.model.freeze_bn is (not trains)
    bn = trainer.model.backbone.bn1
    before = bn.running_mean.clone()
    trainer.run()
    assert (not torch.equal(bn.running_mean, before)) is trains


def test_validation_subset_is_seeded_and_class_balanced(tmp_path):
    root = write_folder(tmp_path / "images", per_class=6)  # files listed class by class
    test = load_dataset("folder", "test", root=str(root))
    assert test.labels[:6].unique().numel() == 1  # a prefix would be one class
    _, labels, described = _validation_data(test, 8, seed=0)
    assert torch.bincount(labels).tolist() == [2, 2, 2, 2]
    assert described == {"images": 8, "of": 24, "classes": 4, "selection": "seeded class-balanced subset"}
    assert torch.equal(_validation_data(test, 8, seed=0)[1], labels)
    assert _validation_data(test, None, seed=0)[2]["selection"] == "all"


def test_metrics_record_what_validation_was_measured_on(tmp_path, data_root):
    metrics = train(tiny_config(tmp_path / "run", data_root, max_steps=1, train_subset=32, val_subset=20),
                    console=QUIET)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["validated_on"]["images"] == 20 and on_disk["validated_on"]["classes"] == 4
    assert metrics["stopped_by"] == "max_steps" and metrics["wall_seconds"] >= metrics["train_seconds"]

