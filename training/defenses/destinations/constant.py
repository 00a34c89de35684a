"""A constant destination: H_D,i = c for every triplet, c in [-2, 2] (HM[S,0.5]; config text: the number)."""

from __future__ import annotations

import torch

from retrieval.errors import UserError
from training.defenses.destinations.base import Destination, parse_constant
from training.defenses.destinations.min_max import MAX_HARDNESS


class ConstantDestination(Destination):
    kind = "constant"
    grammar = "number in [-2,2]"

    def __init__(self, value: float) -> None:
        self.value = value

    @classmethod
    def reads(cls, text: str) -> bool:
        value = parse_constant(text)
        return value is not None and value != MAX_HARDNESS

    @classmethod
    def check(cls, text: str) -> None:
        value = float(text)
        if not -2.0 <= value <= 2.0:
            raise UserError(f"constant destination hardness must lie in [-2, 2], got {value:g}")

    @classmethod
    def build(cls, text: str, *, margin: float, u: float, xi: float, reference: bool, generator) -> ConstantDestination:
        return cls(float(text))

    @classmethod
    def to_notation(cls, text: str) -> str:
        return f"{float(text):g}"

    @classmethod
    def from_notation(cls, dest: str) -> str | None:
        value = parse_constant(dest)
        if value is None:
            return None
        if not -2.0 <= value <= 2.0:
            raise ValueError(f"constant destination {value:g} outside [-2, 2]")
        return f"{value:g}"

    def __call__(self, clean: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return clean.new_full((anchors.numel(),), self.value)
