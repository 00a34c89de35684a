"""Destination hardness H_D for Hardness Manipulation (docs/method.md#destinations): one file per destination, and
the one reader of their config text and notation.

Adding a destination: one file here defining a `Destination` subclass with its `kind` (registering it), the config
text it reads and its notation, imported below, and its section in docs/method.md.
"""

from __future__ import annotations

from retrieval.errors import UserError
from training.defenses.destinations.base import DESTINATIONS, Destination
from training.defenses.destinations.miner import MinerDestination  # noqa: F401  (each import registers, in order)
from training.defenses.destinations.min_max import MAX_HARDNESS, MaximiseHardness  # noqa: F401
from training.defenses.destinations.constant import ConstantDestination  # noqa: F401
from training.defenses.destinations.lga import LGADestination  # noqa: F401
from training.defenses.destinations.boost import BoostDestination  # noqa: F401
from training.miners import unknown_miner

NEEDED = "HM needs a destination: a miner, a constant in [-2, 2], 'lga' or 'boost:<miner>'"


def destination_class(text: str | None) -> type[Destination]:
    """The destination that DefenseConfig.destination `text` names (UserError when none does)."""
    if text is None:
        raise UserError(NEEDED)
    for cls in DESTINATIONS.values():
        if cls.reads(text):
            return cls
    raise unknown_miner(text, "destination")  # any other text would have to be a miner's name


def check_destination(text: str | None) -> None:
    """Reject destination text that build_destination cannot build, with one readable line (UserError)."""
    destination_class(text).check(text)


def build_destination(text: str, *, margin: float, u: float, xi: float, reference: bool, generator=None) -> Destination:
    """A destination from its config text: a miner name or letter, a constant, 'lga' or 'boost:<miner>'.

    `reference` keeps the gradual destinations' state per process and LGA's hard-coded -0.2 (instead of -margin).
    """
    return destination_class(text).build(text, margin=margin, u=u, xi=xi, reference=reference, generator=generator)


def destination_from_notation(dest: str) -> str:
    """The notation's DEST -> config text; ValueError(why) when no destination writes it so."""
    for cls in DESTINATIONS.values():
        text = cls.from_notation(dest)
        if text is not None:
            return text
    raise ValueError(f"unknown destination {dest!r}")


def destination_notation(text: str | None) -> str:
    """Config text -> the notation's DEST."""
    if text is None:
        raise UserError("HM needs a destination")
    return destination_class(text).to_notation(text)


def destination_grammar() -> str:
    """DEST's alternatives in the notation's grammar."""
    return " | ".join(cls.grammar for cls in DESTINATIONS.values() if cls.grammar is not None)
