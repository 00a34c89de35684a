"""Intra-Class Structure loss (docs/method.md#intra-class-structure-loss-ics): keep the adversarial anchor no farther than the positive."""

from __future__ import annotations

import torch

from training.losses.triplet import triplet_loss


def ics_loss(a: torch.Tensor, a_adv: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """mean max(0, d(a, a_adv) - d(a, p)): a triplet loss with the perturbed anchor as positive, the clean positive
    as negative and margin 0. The caller applies the weight lambda; gradients flow through all three inputs."""
    return triplet_loss(a, a_adv, p, margin=0.0)
