"""Greedy Top-1 Translocation (GTT): push a query's original top-1 neighbour m out of its top results.

J is the QA- objective with candidate m: mean_j max(0, d(q~, X_j) - d(q~, m)). Works without labels.
Reported value: 100 x [m is still among the 4 nearest non-self gallery items of the perturbed query].
"""

from __future__ import annotations

import torch

from retrieval.attacks.base import Attack, Batch, Measure, Plan, gallery_distances, mask_self

RETAIN_AT = 4


class GreedyTop1Translocation(Attack):
    name = "GTT"
    measures = (Measure("GTT", score=lambda v: v, higher_is_more_robust=True),)
    probe_order = 0

    def select(self, batch: Batch) -> Plan:
        return Plan(targets=mask_self(batch.distances, batch.self_index).argmin(dim=1))

    def score(self, embeddings, batch, plan):
        distances = gallery_distances(embeddings, self.gallery)
        to_top1 = distances.gather(1, plan.targets[:, None])
        loss = (distances - to_top1).clamp_min(0).mean(dim=1)
        with torch.no_grad():
            masked = mask_self(distances.detach(), batch.self_index)
            nearest = masked.topk(min(RETAIN_AT, masked.shape[1]), dim=1, largest=False).indices
            retained = (nearest == plan.targets[:, None]).any(dim=1)
        return loss, {self.name: 100.0 * retained.float()}
