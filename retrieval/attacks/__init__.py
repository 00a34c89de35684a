"""Ranking attacks of the Empirical Robustness Score, by name (docs/method.md#ranking-attacks).

Nine attacks report the ten values of the ERS table: ES reports both ES:D and ES:R from one run.
Labels: LTM and GTM need query and gallery labels, ES needs them for ES:R only; CA+/CA-/QA+/QA-/TMA/GTT and
ES:D work on any gallery of embeddings.

Adding an attack: one file here defining an `Attack` subclass, imported below (the import order is the ERS table's
column order), and its section in docs/method.md.
"""

from __future__ import annotations

from retrieval.attacks.base import ATTACKS, Attack, AttackResult, Batch, Measure, Plan
from retrieval.attacks.candidate import CAMinus, CAPlus  # noqa: F401  (each import registers its attacks, in order)
from retrieval.attacks.query import QAMinus, QAPlus  # noqa: F401
from retrieval.attacks.tma import TargetedMismatch  # noqa: F401
from retrieval.attacks.es import EmbeddingShift  # noqa: F401
from retrieval.attacks.ltm import LearningToMisrank  # noqa: F401
from retrieval.attacks.gtm import GreedyTop1Misrank  # noqa: F401
from retrieval.attacks.gtt import GreedyTop1Translocation  # noqa: F401
from retrieval.errors import UserError

MEASURES: dict[str, Measure] = {measure.key: measure for cls in ATTACKS.values() for measure in cls.measures}
"""The ten measured values of the ERS table, in its column order."""

VALUE_TO_ATTACK: dict[str, str] = {value: cls.name for cls in ATTACKS.values() for value in cls.reports}
"""Each of the ten measured values -> the attack that reports it."""


def get_attack(name: str) -> type[Attack]:
    """The attack class for an attack name ("ES") or a measured value ("ES:R")."""
    key = VALUE_TO_ATTACK.get(name, name)
    if key not in ATTACKS:
        raise UserError(f"unknown attack {name!r}; choose one of: {', '.join([*ATTACKS, 'ES:D', 'ES:R'])}")
    return ATTACKS[key]


def probe_attacks() -> tuple[str, ...]:
    """The attacks /probe offers, the default first."""
    offered = [cls for cls in ATTACKS.values() if cls.probe_order is not None]
    return tuple(cls.name for cls in sorted(offered, key=lambda cls: cls.probe_order))


__all__ = [
    "ATTACKS", "MEASURES", "VALUE_TO_ATTACK", "Attack", "AttackResult", "Batch", "Measure", "Plan", "get_attack",
    "probe_attacks",
]
