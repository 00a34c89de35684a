"""EST[X], Embedding-Shifted Triplet (docs/method.md#est): shift every image's embedding as far as possible, then mine.

PGD runs on all 2N images independently, minimising -d(e(x~), e(x)); miner X then runs on the *adversarial*
embeddings and the loss is their triplet loss. The reference embedding gets 1e-7 * {-1, 0, 1} noise so the distance
has a gradient at the first step, when x~ = x.
"""

from __future__ import annotations

import torch
from torch import nn

from retrieval.distances import pair_distance
from training.defenses.base import Defense, Stats, clean_embeddings, mean, source_miner, train_forward
from training.defenses.config import DefenseConfig
from training.losses import hardness, triplet_loss

REFERENCE_NOISE = 1e-7


class EmbeddingShiftedTriplet(Defense):
    key, notation = "est", "EST"
    bf16_safe = False  # bf16 moved its adversarial hardness by 0.04 against fp32 (limit 0.01), so `auto` keeps fp32
    trains_batchnorm = True  # the published EST baseline trains BatchNorm on batch statistics (frozen elsewhere)

    def __init__(self, cfg: DefenseConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator=generator)
        self.miner = source_miner(cfg, generator, reference_margin=True)

    def shift_objective(self, clean: torch.Tensor):
        """Embeddings of the perturbed batch -> -distance to the (jittered) clean embeddings."""
        device = self.generator.device if self.generator is not None else clean.device
        jitter = torch.randint(-1, 2, clean.shape, generator=self.generator, device=device).to(clean)
        reference = clean + REFERENCE_NOISE * jitter
        return lambda z: -pair_distance(z, reference)

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        if self.cfg.reference:
            with torch.no_grad():  # the reference's logging forward in train mode: updates BatchNorm statistics
                train_forward(model, images)
        clean = clean_embeddings(model, images)
        result = self.attack(model, images, self.shift_objective(clean))
        z = train_forward(model, result.x)
        a, p, n = self.miner(z.detach(), labels)
        loss = triplet_loss(z[a], z[p], z[n], self.cfg.margin)
        moved = (result.x != images).flatten(1).any(dim=1)
        stats = {
            "loss": float(loss.detach()),
            "adv_loss": float(loss.detach()),
            "hardness_source": mean(hardness(clean[a], clean[p], clean[n])),
            "hardness_adv": mean(hardness(z[a], z[p], z[n])),
            "perturbed_fraction": mean((moved[a] | moved[p] | moved[n]).float()),
            "pgd_steps": float(result.steps),
            "image_passes": float(result.steps * images.shape[0] + z.shape[0]),
        }
        return loss, stats
