"""Ranking attacks of the Empirical Robustness Score, by name (docs/method.md#ranking-attacks).

Nine attacks report the ten values of the ERS table: ES reports both ES:D and ES:R from one run.
Labels: LTM and GTM need query and gallery labels, ES needs them for ES:R only; CA+/CA-/QA+/QA-/TMA/GTT and
ES:D work on any gallery of embeddings.
"""

from __future__ import annotations

from retrieval.attacks.base import Attack, AttackResult, Batch, Plan
from retrieval.attacks.candidate import CAMinus, CAPlus
from retrieval.attacks.es import EmbeddingShift
from retrieval.attacks.gtm import GreedyTop1Misrank
from retrieval.attacks.gtt import GreedyTop1Translocation
from retrieval.attacks.ltm import LearningToMisrank
from retrieval.attacks.profiles import PROFILES, Profile, attack_config
from retrieval.attacks.query import QAMinus, QAPlus
from retrieval.attacks.tma import TargetedMismatch
from retrieval.errors import UserError

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (
        CAPlus, CAMinus, QAPlus, QAMinus, TargetedMismatch,
        EmbeddingShift, LearningToMisrank, GreedyTop1Misrank, GreedyTop1Translocation,
    )
}

VALUE_TO_ATTACK: dict[str, str] = {value: cls.name for cls in ATTACKS.values() for value in cls.reports}
"""Each of the ten measured values -> the attack that reports it."""


def get_attack(name: str) -> type[Attack]:
    """The attack class for an attack name ("ES") or a measured value ("ES:R")."""
    key = VALUE_TO_ATTACK.get(name, name)
    if key not in ATTACKS:
        raise UserError(f"unknown attack {name!r}; choose one of: {', '.join([*ATTACKS, 'ES:D', 'ES:R'])}")
    return ATTACKS[key]


__all__ = [
    "ATTACKS", "PROFILES", "VALUE_TO_ATTACK", "Attack", "AttackResult", "Batch", "Plan", "Profile",
    "attack_config", "get_attack",
]
