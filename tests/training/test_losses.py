"""Triplet hardness and loss and the ICS loss (docs/method.md) against hand-computed values and torch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import hardness, ics_loss, triplet_loss

A = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
P = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
N = torch.tensor([[-1.0, 0.0], [0.0, 1.0]])


def test_hardness_by_hand() -> None:
    # triplet 0: d(a,p) = sqrt2, d(a,n) = 2 (easy); triplet 1: positive opposite, negative orthogonal (hard)
    torch.testing.assert_close(hardness(A, P, N), torch.tensor([math.sqrt(2) - 2, 2 - math.sqrt(2)]), atol=1e-5, rtol=0)


def test_triplet_loss_by_hand() -> None:
    per_triplet = triplet_loss(A, P, N, margin=0.2, reduction="none")
    torch.testing.assert_close(per_triplet, torch.tensor([0.0, 2.2 - math.sqrt(2)]), atol=1e-5, rtol=0)
    torch.testing.assert_close(triplet_loss(A, P, N), per_triplet.mean())
    torch.testing.assert_close(triplet_loss(A, P, N, reduction="sum"), per_triplet.sum())


@pytest.mark.parametrize("margin", [0.05, 0.2, 1.0])  # torch rejects margin 0
def test_triplet_loss_matches_torch_triplet_margin_loss(margin: float) -> None:
    g = torch.Generator().manual_seed(0)
    a, p, n = (F.normalize(torch.randn(64, 32, generator=g), dim=1) for _ in range(3))
    expected = F.triplet_margin_loss(a, p, n, margin=margin, p=2, eps=1e-6)
    torch.testing.assert_close(triplet_loss(a, p, n, margin=margin), expected)


def test_triplet_loss_rejects_unknown_reduction() -> None:
    with pytest.raises(ValueError, match="reduction"):
        triplet_loss(A, P, N, reduction="max")


def test_ics_is_zero_when_the_adversarial_anchor_equals_the_anchor() -> None:
    a = F.normalize(torch.randn(8, 16), dim=1)
    p = F.normalize(a + 0.5 * torch.randn(8, 16), dim=1)  # positive farther than the (unmoved) adversarial anchor
    assert ics_loss(a, a.clone(), p).item() == 0.0


def test_ics_penalises_an_adversarial_anchor_beyond_the_positive() -> None:
    a = torch.tensor([[1.0, 0.0]])
    a_adv = torch.tensor([[-1.0, 0.0]])  # d = 2
    p = torch.tensor([[0.0, 1.0]])  # d = sqrt2
    torch.testing.assert_close(ics_loss(a, a_adv, p), torch.tensor(2 - math.sqrt(2)), atol=1e-5, rtol=0)


def test_ics_gradients_are_finite_when_embeddings_coincide() -> None:
    """Iteration 0 of HM: anchor == adversarial anchor == positive; the 1e-6 of pair_distance keeps grads finite."""
    a = F.normalize(torch.randn(4, 8), dim=1).requires_grad_(True)
    a_adv = a.detach().clone().requires_grad_(True)
    p = a.detach().clone().requires_grad_(True)
    ics_loss(a, a_adv, p).backward()
    assert all(torch.isfinite(t.grad).all() for t in (a, a_adv, p))
