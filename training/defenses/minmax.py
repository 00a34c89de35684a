"""Direct min-max HM[X, 2] (docs/method.md#min-max-hmx2): maximise every triplet's hardness.

No hinge, no destination, no early stop.

It is HM with the unreachable destination 2: every triplet moves, and the step sign of min(0, H - 2)^2 equals that of
-H, which is the objective used here.
"""

from __future__ import annotations

import torch
from torch import nn

from training.defenses.base import REFERENCE_MINER_MARGIN
from training.defenses.hm import HardnessManipulation
from training.defenses.lga import ConstantDestination
from training.losses import hardness

MAX_HARDNESS = 2.0
REFERENCE_C2F2_STEPS = 7
"""The reference C2F2 min-max overrides eta to 7 ("larger eta collapses")."""


def maximise_hardness(z: torch.Tensor) -> torch.Tensor:
    """Embeddings of [a; p; n] -> per-triplet -H."""
    return -hardness(*z.chunk(3))


class MinMax(HardnessManipulation):
    def miner_margin(self) -> float:
        return REFERENCE_MINER_MARGIN if self.cfg.reference else self.cfg.margin

    def build_destination(self, cfg, generator):
        return ConstantDestination(MAX_HARDNESS)

    def objective(self, target: torch.Tensor):
        return maximise_hardness

    def moving(self, h_source: torch.Tensor, h_destination: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(h_source, dtype=torch.bool)

    def early_stop_tol(self, active: int, total: int) -> float | None:
        return None

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
        if self.cfg.reference and getattr(model, "module", model).arch == "c2f2":
            self.eta = REFERENCE_C2F2_STEPS
        loss, stats = super().__call__(model, images, labels)
        del stats["hardness_destination"]
        return loss, stats
