"""Training at a wall-clock budget: the budget stop and resume, fine-tuning from --init, replayed HM (+free(m)),
EST's BatchNorm mode and the class-balanced validation subset."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import pytest
import torch
from rich.console import Console
from test_defenses import Recorder, Tiny
from training_runs import tiny_config, write_folder, write_idx

import training.trainer as trainer_module
from retrieval.datasets import load_dataset
from retrieval.errors import UserError
from training import distributed
from training.checkpoint import load_checkpoint
from training.defenses import build_defense
from training.defenses.config import DefenseConfig
from training.defenses.hm import hm_objective
from training.method import parse_method
from training.trainer import Trainer, _validation_data, train

QUIET = Console(quiet=True)
REPLAYED = DefenseConfig(defense="hm", source="softhard", destination="lga", ics=0.5, pgd_steps=4, replays=3)


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


@pytest.fixture
def batch():
    torch.manual_seed(0)
    images = torch.rand(16, 1, 28, 28) * 0.8 + 0.1
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3]).repeat_interleave(2)
    return Recorder(Tiny()), images, labels


def replays(cfg: DefenseConfig, model, images, labels):
    """Call a replayed defense m times on one batch as the trainer does; returns (defense, losses, stats, inputs)."""
    defense = build_defense(cfg, generator=torch.Generator().manual_seed(3))
    out = [defense(model, images, labels) for _ in range(defense.replays)]
    return defense, [o[0] for o in out], [o[1] for o in out], list(model.inputs)


def test_replayed_hm_moves_by_the_hm_objective_and_carries_the_perturbation_over(batch):
    model, images, labels = batch
    defense, losses, stats, inputs = replays(REPLAYED, model, images, labels)
    assert defense.replays == 3 and defense.paper_cost() == 3
    k = 8  # triplets; the forward holds [a; p; n] copies then the clean anchors and positives for ICS
    x0 = inputs[0][: 3 * k]
    assert stats[0]["perturbed_fraction"] == 0.0  # the first replay trains on clean copies
    eps, alpha = defense.budget(model)
    step = alpha * defense.eta / defense.replays
    for before, after, s in zip(inputs, inputs[1:], stats):
        x, x_next = before[: 3 * k].clone().requires_grad_(True), after[: 3 * k]
        target = torch.full((k,), s["lga_destination"])
        (grad,) = torch.autograd.grad(hm_objective(target)(model.module(x)).mean(), x)
        expected = torch.minimum(torch.maximum(x.detach() - step * grad.sign(), (x0 - eps).clamp_min(0)),
                                 (x0 + eps).clamp_max(1))
        assert torch.allclose(x_next, expected, atol=1e-6)  # the carried-over perturbation moved one HM step
        assert torch.equal(after[3 * k :], inputs[0][3 * k :])  # the clean ICS copies never move
    assert (inputs[-1][: 3 * k] != x0).any()
    assert all(s["pgd_steps"] == i + 1 for i, s in enumerate(stats))


def test_replayed_hm_leaves_triplets_at_their_destination_alone(batch):
    model, images, labels = batch
    settled = dataclasses.replace(REPLAYED, destination="-2", ics=0.0)  # every triplet is already above -2
    _, _, stats, inputs = replays(settled, model, images, labels)
    assert all(torch.equal(x, inputs[0]) for x in inputs)
    assert all(s["perturbed_fraction"] == 0.0 for s in stats)


def test_trainer_makes_one_update_per_replay(tmp_path, data_root):
    cfg = tiny_config(tmp_path / "free", data_root, max_steps=2, train_subset=32, val_subset=16, defense=REPLAYED)
    metrics = train(cfg, console=QUIET)
    assert (metrics["steps"], metrics["updates"], metrics["method"]) == (2, 6, "HM[S,gLGA]&ICS+free(3)")


def test_free_is_hm_only():
    with pytest.raises(UserError, match="HM"):
        build_defense(DefenseConfig(defense="act", replays=2))
    with pytest.raises(UserError, match="free"):
        parse_method("ACT[R]+free(2)")


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

