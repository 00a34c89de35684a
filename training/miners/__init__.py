"""SPC-2 triplet miners (docs/method.md#miners), by name or by the paper's letter."""

from __future__ import annotations

import torch

from retrieval.errors import UserError
from training.miners.base import Miner
from training.miners.distance_weighted import DistanceWeightedMiner
from training.miners.hardest import HardestMiner
from training.miners.random import RandomMiner
from training.miners.semihard import SemihardMiner
from training.miners.softhard import SofthardMiner

MINERS: dict[str, type[Miner]] = {
    miner.name: miner for miner in (RandomMiner, SemihardMiner, SofthardMiner, DistanceWeightedMiner, HardestMiner)
}
LETTERS: dict[str, str] = {"R": "random", "M": "semihard", "S": "softhard", "D": "distance", "H": "hardest"}


def get_miner(
    name_or_letter: str, *, margin: float = 0.2, reference: bool = False, generator: torch.Generator | None = None
) -> Miner:
    """A miner from its name ("softhard") or paper letter ("S")."""
    name = LETTERS.get(name_or_letter, name_or_letter)
    if name not in MINERS:
        valid = ", ".join(f"{letter}/{miner}" for letter, miner in LETTERS.items())
        raise UserError(f"unknown miner {name_or_letter!r}; choose one of: {valid}")
    return MINERS[name](margin=margin, reference=reference, generator=generator)


__all__ = ["LETTERS", "MINERS", "Miner", "get_miner"]
