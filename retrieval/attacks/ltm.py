"""Learning-To-Misrank (LTM): make the farthest other-class item closer than the nearest same-class item.

J = max(0, max_{j in other classes} d(q~, X_j) - min_{j in same class} d(q~, X_j)). Needs labels.
Reported value: 100 x R@1 of the perturbed query with its own gallery entry removed.
Reference quirk: the query's own gallery entry stays in the same-class set (a non-in-place scatter), so the
attack also pushes the query away from its benign copy.
"""

from __future__ import annotations

import torch

from retrieval.attacks.base import NOT_IN_GALLERY, Attack, Batch, Measure, Plan, gallery_distances, top1_hit


class LearningToMisrank(Attack):
    name = "LTM"
    measures = (Measure("LTM", score=lambda v: v, higher_is_more_robust=True),)
    needs_labels = True

    def select(self, batch: Batch) -> Plan:
        same = self.gallery_labels[None, :] == batch.labels[:, None]
        other = ~same
        if not self.reference_quirks:
            rows = torch.nonzero(batch.self_index != NOT_IN_GALLERY).flatten()
            same[rows, batch.self_index[rows]] = False
        return Plan(data={"same": same, "other": other})

    def score(self, embeddings, batch, plan):
        distances = gallery_distances(embeddings, self.gallery)
        farthest_other = distances.masked_fill(~plan.data["other"], float("-inf")).amax(dim=1)
        nearest_same = distances.masked_fill(~plan.data["same"], float("inf")).amin(dim=1)
        loss = (farthest_other - nearest_same).clamp_min(0)  # 0 with gradient 0 when a set is empty
        with torch.no_grad():
            hit = top1_hit(distances.detach(), batch, self.gallery_labels)
        return loss, {self.name: hit}
