"""evaluate_robustness over a small real gallery."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retrieval.datasets import load_dataset
from retrieval.distances import normalize
from retrieval.errors import UserError
from retrieval.robustness.ers import ATTACK_KEYS, ers
from retrieval.robustness.evaluation import _per_query_noise, evaluate_robustness


class LinearEmbedder(nn.Module):
    input_size, channels, embedding_dim, arch = 28, 1, 8, "linear"

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(self.fc(x.flatten(1)))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    ds = load_dataset("fashion-mnist", "test")
    return LinearEmbedder(), ds.tensors()[:120], ds.labels[:120]


def evaluate(setup, **options):
    model, images, labels = setup
    options = {"max_queries": 30, "steps": 2, "batch_size": 16, **options}
    return evaluate_robustness(model, images, labels, progress=False, **options)


@pytest.fixture(scope="module")
def report(setup) -> dict:
    return evaluate(setup, noise_baseline=True, seed=5)


def test_report_holds_every_value_and_its_score(report) -> None:
    assert set(report["attacks"]) == set(ATTACK_KEYS) == set(report["normalized"])
    assert report["ERS"] == pytest.approx(ers(report["attacks"]))
    assert report["collapse"] == {"TMA": report["attacks"]["TMA"], "ES:D": report["attacks"]["ES:D"]}
    assert 0 < report["benign"]["R@1"] <= 100
    assert report["config"]["queries"] == 30 and report["config"]["gallery_size"] == 120
    assert set(report["timings"]["attack_s"]) == {"CA+", "CA-", "QA+", "QA-", "TMA", "ES", "LTM", "GTM", "GTT"}
    assert set(report["noise_baseline"]["attacks"]) == set(ATTACK_KEYS)


def test_the_attacks_beat_random_noise_of_the_same_budget(report) -> None:
    attacked, noise = report["attacks"], report["noise_baseline"]["attacks"]
    assert attacked["CA+"] < noise["CA+"] and attacked["QA-"] > noise["QA-"]
    assert attacked["LTM"] <= noise["LTM"] and attacked["GTT"] <= noise["GTT"]


def test_same_seed_repeats_exactly(setup, report) -> None:
    assert evaluate(setup, seed=5)["attacks"] == report["attacks"]


def test_bad_inputs_are_user_errors(setup) -> None:
    model, images, labels = setup
    with pytest.raises(UserError):
        evaluate_robustness(model, images, labels[:10], progress=False)
    with pytest.raises(UserError):
        evaluate(setup, restarts=1, reference_quirks=True)


def test_a_querys_targets_and_values_do_not_depend_on_its_batch(setup, report) -> None:
    """Targets are drawn per query (seed, attack, query index): cutting the sample into other batches changes nothing."""
    assert evaluate(setup, seed=5, batch_size=7)["per_query"] == report["per_query"]


def test_a_querys_baseline_noise_does_not_depend_on_its_batch(setup) -> None:
    _, images, _ = setup
    together = _per_query_noise(images[:3], torch.tensor([40, 41, 42]), 0.3, seed=5)
    alone = _per_query_noise(images[2:3], torch.tensor([42]), 0.3, seed=5)
    assert torch.equal(together[2:], alone) and not torch.equal(together[1], together[2])
