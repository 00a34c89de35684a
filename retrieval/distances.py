"""Distances on the unit sphere (metric `N`, docs/method.md#conventions): the one place that defines how far two embeddings are."""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAIR_EPS = 1e-6  # torch's pairwise_distance adds this to the difference, keeping gradients finite at d = 0


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2, dim=-1)


def pair_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Row-wise ||u - v + 1e-6||_2, exactly as the reference's triplet loss and HM objective compute it."""
    return F.pairwise_distance(u, v, p=2.0, eps=PAIR_EPS)


def distance_matrix(x: torch.Tensor, y: torch.Tensor | None = None, *, clamp: bool = True) -> torch.Tensor:
    """Euclidean distances between rows of x and y via the Gram matrix.

    For x alone, squared norms come from the Gram diagonal so D[i, i] is exactly 0 (the reference miners' form).
    `clamp=False` reproduces the reference: tiny negative squared distances become NaN.
    """
    if y is None:
        gram = x @ x.T
        sq = gram.diagonal()
        d2 = sq[:, None] + sq[None, :] - 2 * gram
    else:
        d2 = (x * x).sum(-1)[:, None] + (y * y).sum(-1)[None, :] - 2 * (x @ y.T)
    if clamp:
        d2 = d2.clamp_min(0)
    return d2.sqrt()
