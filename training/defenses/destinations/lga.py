"""g_LGA, the Linear Gradual Adversary: H_D = -margin * min(l, u) / u, with l the previous adversarial triplet loss
(initialised to 2.0, so the first destination is -margin): the adversary grows linearly harder as the model's
adversarial loss falls (HM[S,gLGA]; config text: lga)."""

from __future__ import annotations

import torch

from training.defenses.destinations.base import GradualDestination

REFERENCE_MARGIN = 0.2
"""The reference hard-codes -0.2 * l / u instead of -margin * l / u (docs/method.md#reference-quirks)."""


class LGADestination(GradualDestination):
    kind = "lga"
    grammar = "gLGA"

    def __init__(self, margin: float, u: float, sync: bool) -> None:
        super().__init__(u, sync)
        self.margin = margin

    @classmethod
    def reads(cls, text: str) -> bool:
        return text == "lga"

    @classmethod
    def build(cls, text: str, *, margin: float, u: float, xi: float, reference: bool, generator) -> LGADestination:
        """`reference` keeps the state per process and the reference's hard-coded margin."""
        return cls(REFERENCE_MARGIN if reference else margin, u, sync=not reference)

    @classmethod
    def to_notation(cls, text: str) -> str:
        return "gLGA"

    @classmethod
    def from_notation(cls, dest: str) -> str | None:
        return "lga" if dest in ("gLGA", "g_LGA") else None

    def current(self) -> float:
        return -self.margin * self.progress()

    def __call__(self, clean: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return clean.new_full((anchors.numel(),), self.current())
