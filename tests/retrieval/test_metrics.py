"""Benign metrics: hand-computed cases, agreement with pytorch-metric-learning, chunking, NMI and `embed`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from torch import nn

from retrieval.datasets import ImageDataset, TensorImageDataset
from retrieval.metrics import benign_metrics, embed, nmi, per_query_scores, ranking_metrics


def line(*positions: float) -> torch.Tensor:
    """Points on a line: distances (and so rankings) can be read off by hand."""
    return torch.tensor(positions).reshape(-1, 1)


def test_hand_computed_rankings():
    # positions 0, 1, 3, 7 with labels a a b b; rankings without self:
    # q0: a b b  q1: a b b  q2: a a b  q3: b a a
    scores = ranking_metrics(line(0, 1, 3, 7), torch.tensor([0, 0, 1, 1]))
    assert scores == pytest.approx(
        {"R@1": 3 / 4, "R@2": 3 / 4, "mAP": (3 + 1 / 3) / 4, "mAP@R": 3 / 4, "mAP@10": (0.3 + 1 / 30) / 4}
    )


def test_hand_computed_rankings_without_top_hits():
    # positions 0, 1, 3, 7 with labels a b a b: q0: b a b  q1: a a b  q2: b a b  q3: a b a
    scores = ranking_metrics(line(0, 1, 3, 7), torch.tensor([0, 1, 0, 1]))
    assert scores == pytest.approx(
        {"R@1": 0.0, "R@2": 3 / 4, "mAP": (1 / 2 + 1 / 3 + 1 / 2 + 1 / 2) / 4, "mAP@R": 0.0,
         "mAP@10": (3 * 0.05 + 1 / 30) / 4}
    )  # fmt: skip


def test_per_query_scores_on_one_ranking():
    # relevant at positions 1, 3, 4 (K = 3): precisions 1, 2/3, 3/4
    scores = per_query_scores(torch.tensor([[True, False, True, True, False]]))
    assert {k: v.item() for k, v in scores.items()} == pytest.approx(
        {"R@1": 1.0, "R@2": 1.0, "mAP": (1 + 2 / 3 + 3 / 4) / 3, "mAP@R": (1 + 2 / 3) / 3,
         "mAP@10": (1 + 2 / 3 + 3 / 4) / 10}
    )  # fmt: skip


def test_lone_query_counts_as_a_miss():
    scores = ranking_metrics(line(0, 1, 5), torch.tensor([0, 0, 1]))
    assert scores["R@1"] == pytest.approx(2 / 3) and scores["mAP"] == pytest.approx(2 / 3)


def test_the_query_itself_is_dropped_even_when_a_duplicate_ties():
    # items 0 and 1 coincide with different labels; q1 is lone, but if the tied item 0 sorted first and was
    # dropped instead of q1 itself, q1 would "find" itself and score a false hit
    scores = ranking_metrics(line(0, 0, 9, 10), torch.tensor([0, 1, 0, 0]))
    assert scores["R@1"] == pytest.approx(2 / 4)  # q2 and q3 only


def clustered(n_classes: int, per_class: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    labels = labels[torch.randperm(len(labels), generator=g)]
    centres = torch.randn(n_classes, 16, generator=g)
    x = centres[labels] + spread * torch.randn(len(labels), 16, generator=g)
    return F.normalize(x, dim=1), labels


@pytest.mark.parametrize("spread", [0.3, 1.0, 100.0], ids=["clustered", "overlapping", "random"])
def test_agrees_with_pytorch_metric_learning(spread):
    x, y = clustered(n_classes=12, per_class=9, spread=spread, seed=3)
    ours = ranking_metrics(x, y)
    pml = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r")).get_accuracy(x, y)
    full = AccuracyCalculator(include=("mean_average_precision",), k=len(x) - 1).get_accuracy(x, y)
    assert ours["R@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert ours["mAP@R"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    assert ours["mAP"] == pytest.approx(full["mean_average_precision"], abs=1e-6)


def test_chunking_does_not_change_results():
    x, y = clustered(n_classes=7, per_class=15, spread=0.8, seed=1)
    whole = ranking_metrics(x, y, chunk=len(x))
    for chunk in (1, 13, 64):
        assert ranking_metrics(x, y, chunk=chunk) == pytest.approx(whole, abs=1e-6)


def test_benign_metrics_keys_and_range():
    x, y = clustered(n_classes=5, per_class=20, spread=0.5, seed=0)
    scores = benign_metrics(x, y)
    assert set(scores) == {"R@1", "R@2", "mAP", "mAP@R", "mAP@10", "NMI"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert scores["R@2"] >= scores["R@1"]


def test_nmi_separates_clusters_from_noise():
    x, y = clustered(n_classes=4, per_class=50, spread=0.05, seed=2)
    assert nmi(x, y) == pytest.approx(1.0, abs=1e-6)
    noise = F.normalize(torch.randn(200, 16, generator=torch.Generator().manual_seed(4)), dim=1)
    assert nmi(noise, y) < 0.2


def test_nmi_k_means_is_seeded():
    """Overlapping clusters, where k-means ends in a different partition from different starts."""
    x, y = clustered(n_classes=4, per_class=50, spread=0.3, seed=2)
    assert nmi(x, y, seed=123) == nmi(x, y, seed=123) == nmi(x, y)
    assert len({nmi(x, y, seed=s) for s in (1, 2, 3, 123)}) > 1  # the seed reaches k-means


class Flatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(x.flatten(1)), dim=1)


class NoTensors(TensorImageDataset):
    """Same images, but forces the DataLoader path."""

    def tensors(self) -> None:
        return None


def test_embed_paths_agree_and_restore_model_state():
    torch.manual_seed(0)
    model = Flatten().train()
    images = torch.randint(0, 256, (10, 1, 2, 2), dtype=torch.uint8)
    labels = torch.arange(10) % 2
    fast = TensorImageDataset(images, labels, source_prefix="t:test")
    slow = NoTensors(images, labels, source_prefix="t:test")
    assert isinstance(slow, ImageDataset)
    expected = model(images.float() / 255).detach()
    for data in (fast, slow, images.float() / 255):
        out = embed(model, data, batch_size=3)
        assert out.shape == (10, 3) and not out.requires_grad
        assert torch.allclose(out, expected, atol=1e-6)
    assert model.training and all(p.requires_grad for p in model.parameters())
