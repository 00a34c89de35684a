"""Hardness Manipulation HM[source, destination] with optional ICS (docs/method.md#hardness-manipulation-hm).

Per iteration: mine source triplets on the clean batch (eval mode, no grad), compute the destination hardness H_D per
triplet, then PGD on the 3N image copies [a; p; n] (an image in several roles is perturbed independently per copy)
minimising mean_i min(0, H_i - H_D,i)^2 with the reference's early stop. Train on the triplet loss of the perturbed
triplets, plus lambda * ICS when on.

Triplets whose clean hardness already reaches H_D get exactly zero gradient, so they never move: they are left out of
the PGD batch altogether (with the early-stop tolerance rescaled by N/k, the k moving triplets follow exactly the
steps they would take in the full batch). HM[X, X] is N/A[X] (no defense) and skips PGD.

The destination decides how the adversary pursues it (training/defenses/destinations/); the constant 2 makes HM the direct
min-max, which also has its own config key, `minmax` (MinMax below).
"""

from __future__ import annotations

import torch
from torch import nn

from retrieval.robustness.pgd import unwrap
from training.defenses.base import Defense, Stats, clean_embeddings, mean, moved_triplets, source_miner, train_forward
from training.defenses.config import DefenseConfig
from training.defenses.destinations import MAX_HARDNESS, build_destination, check_destination
from training.defenses.destinations.lga import LGADestination
from training.defenses.destinations.miner import MinerDestination
from training.defenses.none import NoDefense
from training.losses import hardness, ics_loss, triplet_loss

EARLY_STOP_TOL = 1e-7
"""Stop when the mean HM objective changes by less than this between two steps (the reference's rule)."""


class HardnessManipulation(Defense):
    key, notation = "hm", "HM"
    takes_destination = True
    ics_applies = True

    @classmethod
    def check(cls, cfg: DefenseConfig) -> None:
        if cls.takes_destination:
            check_destination(cfg.destination)

    def __init__(self, cfg: DefenseConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator=generator)
        self.destination = build_destination(
            self.fixed_destination or cfg.destination,
            margin=cfg.margin, u=cfg.lga_u, xi=cfg.xi, reference=cfg.reference, generator=generator,
        )
        self.miner = source_miner(cfg, generator, reference_margin=self.destination.reference_miner_margin)
        same = isinstance(self.destination, MinerDestination) and self.destination.miner.name == self.miner.name
        self.undefended = NoDefense(cfg, generator=generator) if same else None
        if self.undefended is not None:
            self.eta = 0

    def state_dict(self) -> dict:
        return {"destination": self.destination.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.destination.load_state_dict(state.get("destination", {}))

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        if self.undefended is not None:
            return self.undefended(model, images, labels)
        if self.cfg.reference:
            self.eta = self.destination.reference_steps.get(unwrap(model).arch, self.eta)
        clean = clean_embeddings(model, images)
        a, p, n = self.miner(clean, labels)
        h_source = hardness(clean[a], clean[p], clean[n])
        h_destination = self.destination(clean, labels, a)
        x0 = torch.cat([images[a], images[p], images[n]])
        x_adv, steps, passes = self.perturb(model, x0, self.destination.moving(h_source, h_destination), h_destination)

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
        if not self.destination.reported:
            del stats["hardness_destination"]
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
        # APGD has its own stall rule; HM's early stop belongs to the fixed schedule
        early_stop = self.destination.early_stop and self.cfg.early_stop and self.cfg.schedule == "fixed"
        tol = EARLY_STOP_TOL * total / active.numel() if early_stop else None
        result = self.attack(model, sub, self.destination.objective(h_destination[active]), early_stop_tol=tol)
        return x0.index_copy(0, rows, result.x), result.steps, result.steps * sub.shape[0]


class MinMax(HardnessManipulation):
    """The direct min-max under its own key: HM with the destination fixed at 2 (docs/method.md#min-max-hmx2)."""

    key = "minmax"
    takes_destination = False
    fixed_destination = f"{MAX_HARDNESS:g}"
