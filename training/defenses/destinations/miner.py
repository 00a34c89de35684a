"""A miner as destination: H_D,i = the clean hardness of that miner's triplet i, anchored at the same images as the
source triplets (HM[S,R]; config text: the miner's name or letter)."""

from __future__ import annotations

import torch

from training.defenses.destinations.base import Destination
from training.losses import hardness
from training.miners import LETTERS, MINERS, get_miner, paper_letter


class MinerDestination(Destination):
    kind = "miner"
    grammar = "X"

    def __init__(self, miner) -> None:
        self.miner = miner

    @classmethod
    def reads(cls, text: str) -> bool:
        return text in LETTERS or text in MINERS

    @classmethod
    def build(cls, text: str, *, margin: float, u: float, xi: float, reference: bool, generator) -> MinerDestination:
        return cls(get_miner(text, margin=margin, reference=reference, generator=generator))

    @classmethod
    def to_notation(cls, text: str) -> str:
        return paper_letter(text)

    @classmethod
    def from_notation(cls, dest: str) -> str | None:
        return LETTERS.get(dest)

    def __call__(self, clean: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        a, p, n = self.miner(clean, labels)
        if not torch.equal(a, anchors):
            raise RuntimeError("destination miner returned different anchors from the source miner")
        return hardness(clean[a], clean[p], clean[n])
