"""g_B(miner): H_D,i = H_miner,i + xi * (1 - min(l, u) / u), the miner's hardness plus a boost xi that shrinks while
the previous adversarial loss l is high (HM[S,gB(R)]; config text: boost:<miner>)."""

from __future__ import annotations

import re

import torch

from training.defenses.destinations.base import GradualDestination
from training.defenses.destinations.miner import MinerDestination
from training.miners import LETTERS, check_miner, get_miner, paper_letter

PREFIX = "boost:"
_NOTATION = re.compile(r"g_?B\((?P<x>[A-Z])\)")


class BoostDestination(GradualDestination):
    kind = "boost"
    grammar = "gB(X)"

    def __init__(self, miner, xi: float, u: float, sync: bool) -> None:
        super().__init__(u, sync)
        self.base = MinerDestination(miner)
        self.xi = xi

    @classmethod
    def reads(cls, text: str) -> bool:
        return text.startswith(PREFIX)

    @classmethod
    def check(cls, text: str) -> None:
        check_miner(text.removeprefix(PREFIX), "destination")

    @classmethod
    def build(cls, text: str, *, margin: float, u: float, xi: float, reference: bool, generator) -> BoostDestination:
        """`reference` keeps the state per process."""
        miner = get_miner(text.removeprefix(PREFIX), margin=margin, reference=reference, generator=generator)
        return cls(miner, xi, u, sync=not reference)

    @classmethod
    def to_notation(cls, text: str) -> str:
        return f"gB({paper_letter(text.removeprefix(PREFIX))})"

    @classmethod
    def from_notation(cls, dest: str) -> str | None:
        boost = _NOTATION.fullmatch(dest)
        if boost is None:
            return None
        if boost["x"] not in LETTERS:
            raise ValueError(f"unknown miner letter {boost['x']!r}")
        return PREFIX + LETTERS[boost["x"]]

    def __call__(self, clean: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return self.base(clean, labels, anchors) + self.xi * (1.0 - self.progress())
