"""Softhard miner `spc2-softhard` (S): a hard positive and a hard negative, each drawn uniformly."""

from __future__ import annotations

import torch

from training.miners.base import Miner


class SofthardMiner(Miner):
    """Positive uniform over same-label images farther than the closest negative; negative uniform over
    other-label images closer than the farthest positive (comparisons on squared distances, as the reference).

    Fallbacks: negative -> any other-label image; positive -> any other same-label image. The reference's positive
    fallback draws from all same-label images *including the anchor itself* (a trivially easy triplet with
    d(a,p) = 0, docs/method.md#reference-quirks); `reference=True` keeps that, the default excludes the anchor (and uses the partner
    if nothing else is left). A batch without other labels gets the partner and a uniform negative over the batch.
    """

    name = "softhard"
    letter = "S"

    def mine(
        self, embeddings: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.distances(embeddings, anchors)
        same, different = self.label_masks(labels, anchors)
        inf = torch.full_like(dist, float("inf"))
        farthest_positive = torch.where(same, dist, -inf).amax(dim=1, keepdim=True)
        closest_negative = torch.where(different, dist, inf).amin(dim=1, keepdim=True)
        hard_negative = different & (dist.pow(2) < farthest_positive.pow(2))
        hard_positive = same & (dist.pow(2) > closest_negative.pow(2))

        partner = torch.zeros_like(same)
        partner[torch.arange(len(anchors), device=same.device), self.partners(anchors)] = True
        if self.reference:
            positive_fallbacks = (same,)
        else:
            not_self = same.clone()
            not_self[torch.arange(len(anchors), device=same.device), anchors] = False
            positive_fallbacks = (not_self, partner)
        has_negative = different.any(dim=1, keepdim=True)
        positives = self.sample(
            torch.where(has_negative, self.first_nonempty(hard_positive, *positive_fallbacks), partner)
        )
        negatives = self.sample(self.first_nonempty(hard_negative, different, self.everything(different)))
        return positives, negatives
