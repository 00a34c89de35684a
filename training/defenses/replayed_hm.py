"""HM with gradient reuse, HM[X,Y]+free(m): "free" adversarial training (Shafahi et al., NeurIPS 2019) for HM.

Each batch is replayed m times and every replay is one optimiser update. A replay makes one forward pass of the
current adversarial copies [a; p; n] (plus the clean anchors and positives for ICS); the same embeddings give the
training loss, whose parameter gradient the trainer back-propagates, and the HM objective min(0, H - H_D)^2, whose
input gradient (an input-only backward through the retained graph) moves the perturbation one projected sign step.
The perturbation starts at zero for each batch and carries over between its replays. Each step is alpha * eta / m,
so the m replays can move a pixel as far as eta PGD steps of HM would. Triplets at or above their destination get
exactly zero gradient and stay where they are, as in HM.

Cost per batch: m forward passes with m full backward passes and m input-only backward passes, instead of HM's
eta input-gradient steps plus one training pass, and m parameter updates instead of one.
"""

from __future__ import annotations

import torch
from torch import nn

from retrieval.pgd import ball, descend, unwrap
from training.defenses.base import Stats, clean_embeddings, mean, moved_triplets, train_forward
from training.defenses.config import DefenseConfig
from training.defenses.hm import HardnessManipulation, hm_objective
from training.defenses.lga import LGADestination
from training.losses import hardness, ics_loss, triplet_loss


class ReplayedHM(HardnessManipulation):
    def __init__(self, cfg: DefenseConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator=generator)
        self.replays = cfg.replays
        self._batch: dict | None = None
        """The batch being replayed: its images, triplets, clean copies and current adversarial copies."""

    def paper_cost(self) -> int:
        """Forward+backward passes per batch: one per replay."""
        return self.replays

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        if self.regular is not None:
            return self.regular(model, images, labels)
        batch = self._batch
        if batch is None or batch["images"] is not images or batch["left"] == 0:
            batch = self._batch = self._start(model, images, labels)
        batch["left"] -= 1
        a, p, n = batch["triplets"]
        h_destination = self.destination(batch["clean"], labels, a)

        x = batch["x"].requires_grad_(True)
        z = train_forward(model, torch.cat([x, images[a], images[p]]) if self.cfg.ics else x)
        k = a.numel()
        za, zp, zn = z[: 3 * k].chunk(3)
        objective = hm_objective(h_destination)(z[: 3 * k]).mean()
        (grad,) = torch.autograd.grad(objective, x, retain_graph=True)
        batch["x"] = descend(x.detach(), grad, batch["step"], batch["bounds"])

        adv_loss = triplet_loss(za, zp, zn, self.cfg.margin)
        loss = adv_loss
        stats = {
            "adv_loss": float(adv_loss.detach()),
            "hardness_source": batch["h_source"],
            "hardness_destination": mean(h_destination),
            "hardness_adv": mean(hardness(za, zp, zn)),
            "perturbed_fraction": mean(moved_triplets(x.detach(), batch["x0"], 3).float()),
            "pgd_steps": float(self.replays - batch["left"]),
            "image_passes": float(z.shape[0] + x.shape[0]),
        }
        if self.cfg.ics:
            ca, cp = z[3 * k :].chunk(2)
            ics = ics_loss(ca, za, cp)
            loss = adv_loss + self.cfg.ics * ics
            stats["ics_loss"] = float(ics.detach())
        if isinstance(self.destination, LGADestination):
            stats["lga_destination"] = self.destination.current()
        self.destination.update(stats["adv_loss"])
        stats["loss"] = float(loss.detach())
        return loss, stats

    def _start(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
        """Mine the batch's source triplets on clean embeddings; its perturbation starts at zero."""
        clean = clean_embeddings(model, images)
        a, p, n = self.miner(clean, labels)
        x0 = torch.cat([images[a], images[p], images[n]])
        eps, alpha = self.budget(unwrap(model))
        return {
            "images": images,
            "clean": clean,
            "triplets": (a, p, n),
            "h_source": mean(hardness(clean[a], clean[p], clean[n])),
            "x0": x0,
            "x": x0.clone(),
            "bounds": ball(x0, eps),
            "step": alpha * self.eta / self.replays,
            "left": self.replays,
        }
