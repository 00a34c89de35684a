"""Query attacks QA+ / QA- (M = 1): perturb a query to pull one candidate up / push it down its ranking.

Reported value: 100 x the 0-based rank of the candidate in the perturbed query's ranking over all NX gallery
items (the query's own benign copy included) / NX. Works without labels.
"""

from __future__ import annotations

import torch

from retrieval.attacks.base import Attack, Batch, Measure, Plan, gallery_distances


class _QueryAttack(Attack):
    sign: int  # +1: pull the candidate up (QA+), -1: push it down (QA-)

    def _candidates(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def select(self, batch: Batch) -> Plan:
        return Plan(targets=self._candidates(batch))

    def score(self, embeddings, batch, plan):
        distances = gallery_distances(embeddings, self.gallery)
        to_candidate = distances.gather(1, plan.targets[:, None])
        margin = to_candidate - distances if self.sign > 0 else distances - to_candidate
        loss = margin.clamp_min(0).mean(dim=1)
        with torch.no_grad():
            rank = (distances.detach() < to_candidate.detach()).float().sum(dim=1)
        return loss, {self.name: 100.0 * rank / self.gallery.shape[0]}


class QAPlus(_QueryAttack):
    """QA+: a candidate drawn uniformly from the gallery is pulled towards the top (ideal ~50)."""

    name = "QA+"
    measures = (Measure("QA+", score=lambda v: 2.0 * v, higher_is_more_robust=True),)  # ideal 50 -> 100
    probe_order = 2
    sign = 1

    def _candidates(self, batch: Batch) -> torch.Tensor:
        return self._draw_any(batch)


class QAMinus(_QueryAttack):
    """QA-: a candidate drawn from the query's top-1% neighbours is pushed down."""

    name = "QA-"
    measures = (Measure("QA-", score=lambda v: 100.0 - v, higher_is_more_robust=False),)
    probe_order = 1
    sign = -1

    def _candidates(self, batch: Batch) -> torch.Tensor:
        return self._draw_neighbour(batch)
