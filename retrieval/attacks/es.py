"""Embedding Shift (ES): push a query's embedding as far as possible from its benign embedding.

One run, two values: ES:D, the shift ||e(q~) - e(q)|| in [0, 2] (raw; works without labels), and ES:R,
100 x R@1 of the perturbed query with its own gallery entry removed (needs labels).
Reference quirk: the published ES:D is measured at the start of the last PGD step, not on the final image.
"""

from __future__ import annotations

import torch

from retrieval.attacks.base import Attack, Measure, Plan, gallery_distances, top1_hit
from retrieval.distances import pair_distance


class EmbeddingShift(Attack):
    name = "ES"
    measures = (
        Measure("ES:D", score=lambda v: 100.0 * (2.0 - v) / 2.0, higher_is_more_robust=False, unit="distance"),
        Measure("ES:R", score=lambda v: v, higher_is_more_robust=True),
    )
    probe_order = 3

    def score(self, embeddings, batch, plan: Plan):
        loss = -pair_distance(embeddings, batch.embeddings)  # +1e-6 keeps the gradient finite at zero shift
        with torch.no_grad():
            values = {"ES:D": self._shift(embeddings.detach(), batch.embeddings)}
            if batch.labels is not None and self.gallery_labels is not None:
                distances = gallery_distances(embeddings.detach(), self.gallery)
                values["ES:R"] = top1_hit(distances, batch, self.gallery_labels)
        return loss, values

    def adjust(self, values, batch, plan, before_last_step):
        return values | {"ES:D": self._shift(before_last_step, batch.embeddings)}

    @staticmethod
    def _shift(embeddings: torch.Tensor, benign: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(embeddings - benign, dim=1)
