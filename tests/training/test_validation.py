"""Validation's strong-attack proxy: QA- and TMA under APGD on a seeded sample of the validation images."""

from __future__ import annotations

import pytest
import torch
from test_defenses import Tiny

from retrieval.robustness.ers import normalized_score
from training.validation import validate


@pytest.fixture(scope="module")
def validation_set() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(48, 1, 28, 28, generator=generator), torch.arange(48) % 4


def proxy(validation_set, steps: int) -> dict:
    torch.manual_seed(0)
    images, labels = validation_set
    return validate(Tiny(), images, labels, batch_size=16, attack_queries=12, attack_steps=steps)


def test_the_proxy_is_the_mean_normalised_score_of_its_two_attacks(validation_set):
    metrics = proxy(validation_set, steps=8)
    expected = (normalized_score("QA-", metrics["robust_QA-"]) + normalized_score("TMA", metrics["robust_TMA"])) / 2
    assert metrics["robust_proxy"] == pytest.approx(expected)


def test_the_proxy_attacks_for_real_and_repeats_exactly(validation_set):
    """An attacked validation scores lower than an unattacked one (0 steps); the same model gives the same numbers."""
    attacked, benign = proxy(validation_set, steps=8), proxy(validation_set, steps=0)
    assert attacked["robust_proxy"] < benign["robust_proxy"] - 1
    assert attacked["robust_QA-"] > benign["robust_QA-"] and attacked["robust_TMA"] > benign["robust_TMA"]
    assert proxy(validation_set, steps=8) == attacked


def test_without_attack_queries_validation_measures_benign_metrics_only(validation_set):
    images, labels = validation_set
    metrics = validate(Tiny(), images, labels, batch_size=16)
    assert "R@1" in metrics and not any(k.startswith("robust_") for k in metrics)
