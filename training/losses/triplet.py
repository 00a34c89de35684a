"""Triplet hardness and the triplet margin loss on normalised embeddings (docs/method.md#triplet-loss-and-hardness)."""

from __future__ import annotations

import torch

from retrieval.distances import pair_distance

REDUCTIONS = ("mean", "sum", "none")


def hardness(ea: torch.Tensor, ep: torch.Tensor, en: torch.Tensor) -> torch.Tensor:
    """H = d(a, p) - d(a, n) per triplet, in [-2, 2] on the unit sphere; larger is harder."""
    return pair_distance(ea, ep) - pair_distance(ea, en)


def triplet_loss(
    ea: torch.Tensor, ep: torch.Tensor, en: torch.Tensor, margin: float = 0.2, reduction: str = "mean"
) -> torch.Tensor:
    """max(0, H + margin) per triplet; same numbers as torch's triplet_margin_loss(p=2, eps=1e-6)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    losses = (hardness(ea, ep, en) + margin).clamp_min(0)
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses
