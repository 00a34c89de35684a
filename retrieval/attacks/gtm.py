"""Greedy Top-1 Misranking (GTM): pull a query towards the nearest item whose label differs from its top-1's.

"Matching" is defined by the label of the query's current (benign, non-self) top-1 item, so the target needs
gallery labels; the reported value, 100 x R@1 of the perturbed query (self removed), needs query labels.
Reference quirk: the reference computes the target's position *within the list of non-matching items* and then
indexes the full gallery with it, so it actually attacks towards gallery item k = that position.

By default each query is attacked towards both targets, the intended one and the reference's, and keeps the
stronger result, so the intended protocol is never weaker than the reference's (on some models the reference's
accidental target is the easier one to reach). `--reference-quirks` uses the reference's target alone.
"""

from __future__ import annotations

import torch

from retrieval.attacks.base import Attack, Batch, Measure, Plan, gallery_distances, mask_self, top1_hit
from retrieval.distances import pair_distance


class GreedyTop1Misrank(Attack):
    name = "GTM"
    measures = (Measure("GTM", score=lambda v: v, higher_is_more_robust=True),)
    needs_labels = True

    def select(self, batch: Batch) -> Plan:
        return self._targets(batch)[1 if self.reference_quirks else 0]

    def plans(self, batch: Batch) -> list[Plan]:
        return [self.select(batch)] if self.reference_quirks else self._targets(batch)

    def _targets(self, batch: Batch) -> list[Plan]:
        """[intended plan, reference plan]: the nearest item of another label than the top-1, and the reference's
        mis-indexed item (that item's position within the non-matching items, used as a gallery index)."""
        masked = mask_self(batch.distances, batch.self_index)
        top1_label = self.gallery_labels[masked.argmin(dim=1)]
        unmatching = self.gallery_labels[None, :] != top1_label[:, None]
        nearest = masked.masked_fill(~unmatching, float("inf")).argmin(dim=1)
        misindexed = unmatching.long().cumsum(dim=1).gather(1, nearest[:, None]).squeeze(1) - 1
        return [Plan(targets=t, data={"target": self.gallery[t]}) for t in (nearest, misindexed)]

    def score(self, embeddings, batch, plan):
        loss = pair_distance(embeddings, plan.data["target"])
        with torch.no_grad():
            hit = top1_hit(gallery_distances(embeddings.detach(), self.gallery), batch, self.gallery_labels)
        return loss, {self.name: hit}
