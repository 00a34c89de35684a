"""The constant 2, the direct min-max (docs/method.md#min-max-hmx2): H_D = 2 is beyond every triplet, so the
adversary maximises H for every triplet, to the last step. The one place "HM[X,2] is min-max" is decided."""

from __future__ import annotations

import torch

from training.defenses.destinations.base import Destination, parse_constant
from training.losses import hardness

MAX_HARDNESS = 2.0
"""The constant destination that makes HM the direct min-max: no triplet's hardness d(a,p) - d(a,n) exceeds 2."""
REFERENCE_C2F2_STEPS = 7
"""The reference C2F2 min-max overrides eta to 7 ("larger eta collapses")."""


def maximise_hardness(z: torch.Tensor) -> torch.Tensor:
    """Embeddings of [a; p; n] -> per-triplet -H."""
    return -hardness(*z.chunk(3))


class MaximiseHardness(Destination):
    """HM[X,2]: every triplet moves, PGD minimises -H (the step sign of min(0, H - 2)^2) without early stop, and the
    reference's quirks of min-max apply (miner margin 1.0, eta 7 on C2F2). The notation writes it as the constant."""

    kind = "min-max"
    grammar = None
    early_stop = False
    reported = False
    reference_miner_margin = True
    reference_steps = {"c2f2": REFERENCE_C2F2_STEPS}

    @classmethod
    def reads(cls, text: str) -> bool:
        return parse_constant(text) == MAX_HARDNESS

    @classmethod
    def build(cls, text: str, *, margin: float, u: float, xi: float, reference: bool, generator) -> MaximiseHardness:
        return cls()

    @classmethod
    def to_notation(cls, text: str) -> str:
        return f"{MAX_HARDNESS:g}"

    def __call__(self, clean: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return clean.new_full((anchors.numel(),), MAX_HARDNESS)

    def moving(self, h_source: torch.Tensor, h_destination: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(h_source, dtype=torch.bool)

    def objective(self, target: torch.Tensor):
        return maximise_hardness
