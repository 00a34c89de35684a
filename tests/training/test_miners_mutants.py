"""training.miners: the refusal of a batch that is not SPC-2 shaped, clamped distances, and the softhard rule at its
edge (each a behaviour a sampled mutant of training/miners changed without a test noticing)."""

from __future__ import annotations

import math

import pytest
import torch

from retrieval.errors import UserError
from training.miners import get_miner


@pytest.mark.parametrize(("rows", "labels", "shape"), [(3, 3, "(3, 4)"), (4, 2, "(4, 4)")])
def test_a_bad_batch_is_refused_with_its_shapes(rows, labels, shape):
    with pytest.raises(ValueError) as refused:
        get_miner("R")(torch.randn(rows, 4), torch.arange(labels))
    assert str(refused.value) == f"miner expects 2N embeddings with 2N labels, got {shape} and {labels} labels"


def test_intended_distances_are_clamped_and_reference_distances_keep_the_nan():
    """docs/method.md#reference-quirks: the reference takes the sqrt of unclamped squared distances.

    One-dimensional embeddings a and its float32 successor b: each Gram entry is a single correctly rounded product
    (no sum a BLAS could order differently), and for this a the Gram form a^2 + b^2 - 2ab rounds below zero on any CPU."""
    a = torch.tensor(0.7481282949447632)
    b = torch.nextafter(a, torch.tensor(1.0))
    assert float(a * a + b * b - 2 * (a * b)) < 0  # negative by rounding, the case the clamp exists for
    embeddings, anchors = torch.stack([a, b]).reshape(2, 1), torch.tensor([0])
    assert get_miner("R").distances(embeddings, anchors).tolist() == [[0.0, 0.0]]
    assert get_miner("R", reference=True).distances(embeddings, anchors)[0, 1].isnan()


def test_softhard_negative_farther_than_every_positive_is_not_hard():
    """Anchor 0's positive is at 0.8; negatives at 0.85 and 1.5 are both beyond it, so neither is hard and the
    negative falls back to any other-label image."""
    def on_circle(chord: float) -> list[float]:
        angle = 2 * math.asin(chord / 2)
        return [math.cos(angle), math.sin(angle)]

    embeddings = torch.tensor([on_circle(0.0), on_circle(0.8), on_circle(0.85), on_circle(-1.5)])
    labels = torch.tensor([0, 0, 1, 1])
    chosen = {get_miner("S", generator=torch.Generator().manual_seed(s))(embeddings, labels)[2][0].item()
              for s in range(30)}
    assert chosen == {2, 3}


def test_an_unknown_miner_is_refused_listing_letters_and_names():
    with pytest.raises(UserError) as refused:
        get_miner("Q")
    assert str(refused.value) == ("unknown miner 'Q'; choose one of: "
                                  "R/random, M/semihard, S/softhard, D/distance, H/hardest")
