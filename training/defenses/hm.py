"""Hardness Manipulation HM[source, destination] with optional ICS (docs/method.md#hardness-manipulation-hm).

Per iteration: mine source triplets on the clean batch (eval mode, no grad), compute the destination hardness H_D per
triplet, then PGD on the 3N image copies [a; p; n] (an image in several roles is perturbed independently per copy)
minimising mean_i min(0, H_i - H_D,i)^2 with the reference's early stop. Train on the triplet loss of the perturbed
triplets, plus lambda * ICS when on.

Triplets whose clean hardness already reaches H_D get exactly zero gradient, so they never move: they are left out of
the PGD batch altogether (with the early-stop tolerance rescaled by N/k, the k moving triplets follow exactly the
steps they would take in the full batch). HM[X, X] is regular training with miner X and skips PGD.
"""

from __future__ import annotations

import torch
from torch import nn

from training.defenses.base import Defense, Stats, clean_embeddings, mean, moved_triplets, train_forward
from training.defenses.config import DefenseConfig
from training.defenses.lga import LGADestination, MinerDestination, build_destination
from training.defenses.none import Regular
from training.losses import hardness, ics_loss, triplet_loss
from training.miners import get_miner

EARLY_STOP_TOL = 1e-7
"""Stop when the mean HM objective changes by less than this between two steps (the reference's rule)."""


def hm_objective(target: torch.Tensor):
    """Embeddings of [a; p; n] -> per-triplet min(0, H - H_D)^2: zero (and zero gradient) once H reaches H_D."""

    def objective(z: torch.Tensor) -> torch.Tensor:
        return (hardness(*z.chunk(3)) - target).clamp(max=0).square()

    return objective


class HardnessManipulation(Defense):
    def __init__(self, cfg: DefenseConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator=generator)
        self.miner = get_miner(cfg.source, margin=self.miner_margin(), reference=cfg.reference, generator=generator)
        self.destination = self.build_destination(cfg, generator)
        same = isinstance(self.destination, MinerDestination) and self.destination.miner.name == self.miner.name
        self.regular = Regular(cfg, generator=generator) if same else None
        if self.regular is not None:
            self.eta = 0

    def state_dict(self) -> dict:
        return {"destination": self.destination.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.destination.load_state_dict(state.get("destination", {}))

    def miner_margin(self) -> float:
        return self.cfg.margin

    def build_destination(self, cfg: DefenseConfig, generator):
        return build_destination(
            cfg.destination, margin=cfg.margin, u=cfg.lga_u, xi=cfg.xi, reference=cfg.reference, generator=generator
        )

    def objective(self, target: torch.Tensor):
        return hm_objective(target)

    def moving(self, h_source: torch.Tensor, h_destination: torch.Tensor) -> torch.Tensor:
        """Triplets the adversary can move: those whose clean hardness is below the destination."""
        return h_source < h_destination

    def early_stop_tol(self, active: int, total: int) -> float | None:
        return EARLY_STOP_TOL * total / active

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        if self.regular is not None:
            return self.regular(model, images, labels)
        clean = clean_embeddings(model, images)
        a, p, n = self.miner(clean, labels)
        h_source = hardness(clean[a], clean[p], clean[n])
        h_destination = self.destination(clean, labels, a)
        x0 = torch.cat([images[a], images[p], images[n]])
        x_adv, steps, passes = self.perturb(model, x0, self.moving(h_source, h_destination), h_destination)

        n_triplets = a.numel()
        z = train_forward(model, torch.cat([x_adv, images[a], images[p]]) if self.cfg.ics else x_adv)
        za, zp, zn = z[: 3 * n_triplets].chunk(3)
        adv_loss = triplet_loss(za, zp, zn, self.cfg.margin)
        loss = adv_loss
        stats = {
            "adv_loss": float(adv_loss.detach()),
            "hardness_source": mean(h_source),
            "hardness_destination": mean(h_destination),
            "hardness_adv": mean(hardness(za, zp, zn)),
            "perturbed_fraction": mean(moved_triplets(x_adv, x0, 3).float()),
            "pgd_steps": float(steps),
            "image_passes": float(passes + z.shape[0]),
        }
        if self.cfg.ics:
            ca, cp = z[3 * n_triplets :].chunk(2)
            ics = ics_loss(ca, za, cp)
            loss = adv_loss + self.cfg.ics * ics
            stats["ics_loss"] = float(ics.detach())
        if isinstance(self.destination, LGADestination):
            stats["lga_destination"] = self.destination.current()
        self.destination.update(stats["adv_loss"])
        stats["loss"] = float(loss.detach())
        return loss, stats

    def perturb(
        self, model: nn.Module, x0: torch.Tensor, moving: torch.Tensor, h_destination: torch.Tensor
    ) -> tuple[torch.Tensor, int, int]:
        """(3N adversarial copies, PGD steps taken, image forward+backward passes); only `moving` triplets enter PGD."""
        active = moving.nonzero().squeeze(1)
        if active.numel() == 0:
            return x0, 0, 0
        total = moving.numel()
        rows = torch.cat([active, active + total, active + 2 * total])
        sub = x0[rows]
        tol = self.early_stop_tol(active.numel(), total)
        result = self.attack(model, sub, self.objective(h_destination[active]), early_stop_tol=tol)
        return x0.index_copy(0, rows, result.x), result.steps, result.steps * sub.shape[0]
