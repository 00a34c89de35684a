"""No defense, N/A[X] (--defense none; docs/method.md#triplet-loss-and-hardness): clean forward, miner X on the
embeddings, triplet loss."""

from __future__ import annotations

import torch
from torch import nn

from training.defenses.base import Defense, Stats, mean, source_miner, train_forward
from training.defenses.config import DefenseConfig
from training.losses import hardness, triplet_loss


class NoDefense(Defense):
    """No adversary: one forward+backward of the 2N clean images (paper cost 1)."""

    key, notation = "none", "N/A"

    def __init__(self, cfg: DefenseConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator=generator)
        self.miner = source_miner(cfg, generator, reference_margin=False)
        self.eta = 0

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        emb = train_forward(model, images)
        a, p, n = self.miner(emb.detach(), labels)
        loss = triplet_loss(emb[a], emb[p], emb[n], self.cfg.margin)
        stats = {
            "loss": float(loss.detach()),
            "hardness_source": mean(hardness(emb[a], emb[p], emb[n])),
            "perturbed_fraction": 0.0,
            "pgd_steps": 0.0,
            "image_passes": float(images.shape[0]),
        }
        return loss, stats
