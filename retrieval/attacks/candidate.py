"""Candidate attacks CA+ / CA- (W = 1): perturb a gallery candidate to move it up / down one query's ranking.

Reported value: 100 x the rank percentile of the perturbed candidate in the query's ranking over the benign
gallery, #{j : d(q, c~) > d(q, X_j)} / NX. The gallery includes the candidate's own benign copy.
"""

from __future__ import annotations

import torch

from retrieval.attacks.base import Attack, Batch, Measure, Plan, gallery_distances
from retrieval.distances import pair_distance


class _CandidateAttack(Attack):
    sign: int  # +1: pull the candidate up (CA+), -1: push it down (CA-)

    def _queries(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def select(self, batch: Batch) -> Plan:
        queries = self._queries(batch)
        # the query's distances to every gallery item are constants: computed once, not per PGD step
        rows = gallery_distances(self.gallery[queries], self.gallery)
        return Plan(targets=queries, data={"query": self.gallery[queries], "rows": rows})

    def score(self, embeddings, batch, plan):
        to_query = pair_distance(plan.data["query"], embeddings)[:, None]
        rows = plan.data["rows"]
        margin = to_query - rows if self.sign > 0 else rows - to_query
        loss = margin.clamp_min(0).mean(dim=1)
        with torch.no_grad():
            percentile = 100.0 * (to_query.detach() > rows).float().mean(dim=1)
        return loss, {self.name: percentile}


class CAPlus(_CandidateAttack):
    """CA+: a query drawn uniformly from the gallery; the candidate is pulled towards its top (ideal ~50)."""

    name = "CA+"
    measures = (Measure("CA+", score=lambda v: 2.0 * v, higher_is_more_robust=True),)  # ideal 50 (a random rank) -> 100
    sign = 1

    def _queries(self, batch: Batch) -> torch.Tensor:
        return self._draw_any(batch)


class CAMinus(_CandidateAttack):
    """CA-: a query drawn from the candidate's top-1% neighbours; the candidate is pushed down its ranking."""

    name = "CA-"
    measures = (Measure("CA-", score=lambda v: 100.0 - v, higher_is_more_robust=False),)
    sign = -1

    def _queries(self, batch: Batch) -> torch.Tensor:
        return self._draw_neighbour(batch)
