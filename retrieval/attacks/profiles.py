"""Attack budgets of the Empirical Robustness Score (docs/method.md#ranking-attacks) as PGD configurations.

Which profile a model gets by default is its input-size protocol's (`retrieval.protocol.protocol_for`)."""

from __future__ import annotations

from dataclasses import dataclass

from retrieval.errors import UserError
from retrieval.pgd import PGDConfig


@dataclass(frozen=True)
class Profile:
    eps: float
    alpha: float
    steps: int
    batch_size: int
    """Queries per batch in the reference (valbatchsize): results are means of per-batch means."""


PROFILES: dict[str, Profile] = {
    "rob28": Profile(eps=77 / 255, alpha=3 / 255, steps=32, batch_size=128),  # MNIST, Fashion-MNIST
    "rob224": Profile(eps=8 / 255, alpha=3 / 255, steps=32, batch_size=112),  # CUB, CARS, SOP
}


STRONG_STEPS = 100
STRONG_RESTARTS = 5
"""`--strong`: 100 steps, and 5 random-start runs after the first; each query keeps its strongest iterate of all."""


def protocol(profile: str, cfg: PGDConfig, reference_quirks: bool) -> str:
    """The evaluation protocol in words, written into every robustness record and table."""
    starts = 1 + cfg.restarts
    base = f"{profile} eps {cfg.eps * 255:.4g}/255, alpha {cfg.alpha * 255:.4g}/255, {cfg.steps} steps x {starts} start(s)"
    if reference_quirks:
        return base + ", reference protocol (last iterate, reference GTM target, LTM self entry, ES:D one step early)"
    return base + ", best iterate, GTM: stronger of the intended and the reference target"


def attack_config(
    profile: str,
    *,
    steps: int | None = None,
    restarts: int = 0,
    eps: float | None = None,
    reference_quirks: bool = False,
) -> PGDConfig:
    """PGD settings for an evaluation.

    By default every attack keeps, per item, its strongest iterate (and run, with restarts), so more steps or
    restarts can never weaken it. The reference protocol (`reference_quirks`) returns the last iterate of a
    single run, as the published numbers did.
    """
    if profile not in PROFILES:
        raise UserError(f"unknown attack profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if reference_quirks and restarts:
        raise UserError("--reference-quirks follows the reference protocol, which has no restarts")
    p = PROFILES[profile]
    n = p.steps if steps is None else steps
    budget = p.eps if eps is None else eps
    if n < 0 or restarts < 0 or budget < 0:
        raise UserError("steps, restarts and eps must be >= 0")
    return PGDConfig(eps=budget, alpha=p.alpha, steps=n, restarts=restarts, keep_best=not reference_quirks)
