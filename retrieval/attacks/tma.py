"""Targeted Mismatch Attack (TMA): steer a query's embedding towards a random gallery embedding.

Reported value: cosine similarity to the target (raw, not percent; lower = more robust; near 1 signals a model
whose embeddings an attacker can place anywhere). Works without labels.
"""

from __future__ import annotations

import torch.nn.functional as F

from retrieval.attacks.base import Attack, Batch, Measure, Plan


class TargetedMismatch(Attack):
    name = "TMA"
    measures = (Measure("TMA", score=lambda v: 100.0 * (1.0 - v), higher_is_more_robust=False, unit="cosine"),)

    def select(self, batch: Batch) -> Plan:
        targets = self._draw(self.gallery.shape[0], len(batch.embeddings))
        return Plan(targets=targets, data={"target": self.gallery[targets]})

    def score(self, embeddings, batch, plan):
        cosine = F.cosine_similarity(embeddings, plan.data["target"], dim=1)
        return 1.0 - cosine, {self.name: cosine.detach()}
