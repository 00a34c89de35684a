"""Distance-weighted miner `spc2-distance` (D): negatives drawn with probability 1 / q(d) (Wu et al. 2017)."""

from __future__ import annotations

import torch

from training.miners.base import Miner

MIN_DISTANCE = 1e-4
"""Intended mode clamps d here before log d: exact duplicates would otherwise get log weight +inf (then NaN).
Gram-form float32 distances are only accurate to about 3e-4, so this changes no real ordering."""
MIN_SPHERE_TERM = 1e-8
"""Intended mode clamps 1 - d^2/4 here, so antipodal pairs (d = 2) get a finite weight instead of NaN."""


class DistanceWeightedMiner(Miner):
    """Partner positive; negative sampled with weight 1/q(d), where q is the density of pairwise distances on
    the unit sphere in k = embedding-dim dimensions:

        log w(d) = (2 - k) log d - ((k - 3) / 2) log(1 - d^2 / 4),   w = exp(log w - row max),

    same-label entries (anchor included) weigh 0; no distance cut-off (unlike Wu et al.), so with k = 512 this
    behaves almost like Hardest. A row without any positive weight is sampled uniformly over the *whole* batch (may
    return a same-label image): no negatives, or - reference mode, unclamped - a NaN distance or a negative at
    d = 0 / d = 2, whose infinite or NaN log weight turns the row to NaN (counted as 0), exactly as the reference.
    The default clamps d (MIN_DISTANCE, MIN_SPHERE_TERM) so such negatives get the largest finite weight instead.
    """

    name = "distance"
    letter = "D"

    def mine(
        self, embeddings: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.distances(embeddings, anchors)
        same, _ = self.label_masks(labels, anchors)
        k = embeddings.shape[1]
        sphere = 1 - dist.pow(2) / 4
        if not self.reference:
            dist = dist.clamp_min(MIN_DISTANCE)
            sphere = sphere.clamp_min(MIN_SPHERE_TERM)
        log_weights = (2 - k) * dist.log() - (k - 3) / 2 * sphere.log()
        log_weights = log_weights.masked_fill(same, float("-inf"))
        weights = (log_weights - log_weights.amax(dim=1, keepdim=True)).exp().nan_to_num(0.0)
        weights = torch.where((weights > 0).any(dim=1, keepdim=True), weights, torch.ones_like(weights))
        return self.partners(anchors), self.sample(weights)
