"""SPC-2 triplet miners (docs/method.md#miners), by name or by the paper's letter.

Adding a miner: one file here defining a `Miner` subclass with its `name` and `letter`, imported below, and its
section in docs/method.md.
"""

from __future__ import annotations

import torch

from retrieval.errors import UserError
from training.miners.base import MINERS, Miner
from training.miners.random import RandomMiner  # noqa: F401  (each import registers its miner, in this order)
from training.miners.semihard import SemihardMiner  # noqa: F401
from training.miners.softhard import SofthardMiner  # noqa: F401
from training.miners.distance_weighted import DistanceWeightedMiner  # noqa: F401
from training.miners.hardest import HardestMiner  # noqa: F401
from training.miners.blend import BlendMiner  # noqa: F401

LETTERS: dict[str, str] = {miner.letter: name for name, miner in MINERS.items()}
"""The paper's letter of each miner -> its name."""


def check_miner(name_or_letter: str, what: str = "") -> str:
    """The name of a miner given by name or letter; a UserError naming it as the `what` miner ("source") otherwise."""
    name = LETTERS.get(name_or_letter, name_or_letter)
    if name not in MINERS:
        raise unknown_miner(name_or_letter, what)
    return name


def unknown_miner(text: str, what: str = "") -> UserError:
    """The error for text that names no miner, listing letters and names."""
    valid = ", ".join(f"{letter}/{miner}" for letter, miner in LETTERS.items())
    return UserError(f"unknown {what + ' ' if what else ''}miner {text!r}; choose one of: {valid}")


def paper_letter(name_or_letter: str) -> str:
    """The paper's letter of a miner given by name or letter."""
    if name_or_letter in LETTERS:
        return name_or_letter
    if name_or_letter not in MINERS:
        raise UserError(f"miner {name_or_letter!r} has no paper letter; choose one of: {', '.join(MINERS)}")
    return MINERS[name_or_letter].letter


def get_miner(
    name_or_letter: str, *, margin: float = 0.2, reference: bool = False, generator: torch.Generator | None = None
) -> Miner:
    """A miner from its name ("softhard") or paper letter ("S")."""
    return MINERS[check_miner(name_or_letter)](margin=margin, reference=reference, generator=generator)


__all__ = ["LETTERS", "MINERS", "Miner", "check_miner", "get_miner", "paper_letter", "unknown_miner"]
