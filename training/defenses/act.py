"""ACT[X], Anti-Collapse Triplet (docs/method.md#act): the adversary pulls positive and negative together.

Anchors stay clean.

PGD runs on the 2N copies [p; n] minimising mean_i d(p~_i, n~_i); the loss is the triplet loss of (clean anchor with
gradient, p~, n~). ICS does not apply (no adversarial anchor).
"""

from __future__ import annotations

import torch
from torch import nn

from retrieval.distances import pair_distance
from training.defenses.base import Defense, Stats, clean_embeddings, mean, moved_triplets, source_miner, train_forward
from training.defenses.config import DefenseConfig
from training.losses import hardness, triplet_loss


def collapse(z: torch.Tensor) -> torch.Tensor:
    """Embeddings of [p; n] -> per-pair distance d(p, n), which the adversary minimises."""
    return pair_distance(*z.chunk(2))


class AntiCollapse(Defense):
    key, notation = "act", "ACT"

    def __init__(self, cfg: DefenseConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator=generator)
        self.miner = source_miner(cfg, generator, reference_margin=True)

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        clean = clean_embeddings(model, images)
        a, p, n = self.miner(clean, labels)
        x0 = torch.cat([images[p], images[n]])
        result = self.attack(model, x0, collapse)
        z = train_forward(model, torch.cat([images[a], result.x]))
        za, zp, zn = z.chunk(3)
        loss = triplet_loss(za, zp, zn, self.cfg.margin)
        stats = {
            "loss": float(loss.detach()),
            "adv_loss": float(loss.detach()),
            "hardness_source": mean(hardness(clean[a], clean[p], clean[n])),
            "hardness_adv": mean(hardness(za, zp, zn)),
            "perturbed_fraction": mean(moved_triplets(result.x, x0, 2).float()),
            "pgd_steps": float(result.steps),
            "image_passes": float(result.steps * x0.shape[0] + z.shape[0]),
        }
        return loss, stats
