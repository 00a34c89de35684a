"""Semihard miner `spc2-semihard` (M): negatives just beyond the positive, within the margin."""

from __future__ import annotations

import torch

from training.miners.base import Miner


class SemihardMiner(Miner):
    """Partner positive; negative uniform over {n : d(a,p) < d(a,n) < d(a,p) + margin}.

    Fallbacks: any other-label image, then the whole batch. The first inequality is tested on squared distances
    as in the reference; NaN distances (reference mode) compare False and so are never semihard.
    """

    name = "semihard"
    letter = "M"

    def mine(
        self, embeddings: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.distances(embeddings, anchors)
        positives = self.partners(anchors)
        _, different = self.label_masks(labels, anchors)
        d_ap = dist.gather(1, positives[:, None])
        semihard = (d_ap.pow(2) < dist.pow(2)) & (d_ap - dist + self.margin > 0) & different
        negatives = self.sample(self.first_nonempty(semihard, different, self.everything(different)))
        return positives, negatives
