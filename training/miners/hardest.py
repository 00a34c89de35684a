"""Hardest miner `spc2-hard` (H): the closest other-label image."""

from __future__ import annotations

import torch

from training.miners.base import Miner


class HardestMiner(Miner):
    """Partner positive; negative = argmin of d(a, n) over other-label images at non-zero distance.

    The reference filters on `different_label * d != 0`, so in reference mode a NaN distance (unclamped duplicate)
    passes the filter whatever its label and wins the argmin. The reference has no fallback (it would crash);
    here a row without candidates draws uniformly over the other-label images, then over the whole batch.
    """

    name = "hardest"
    letter = "H"

    def mine(
        self, embeddings: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.distances(embeddings, anchors)
        _, different = self.label_masks(labels, anchors)
        candidates = (different * dist) != 0
        hardest = torch.where(candidates, dist, torch.full_like(dist, float("inf"))).argmin(dim=1)
        fallback = self.sample(self.first_nonempty(different, self.everything(different)))
        negatives = torch.where(candidates.any(dim=1), hardest, fallback)
        return self.partners(anchors), negatives
