"""Attack budgets of the Empirical Robustness Score (docs/method.md#ranking-attacks) as PGD configurations.

Which profile a model gets by default is its input-size protocol's (`retrieval.protocol.protocol_for`)."""

from __future__ import annotations

from dataclasses import dataclass

from retrieval.errors import UserError
from retrieval.robustness.pgd import PGDConfig


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


@dataclass(frozen=True)
class Attacker:
    """How hard a profile's budget is searched: the PGD schedule, steps and random restarts."""

    schedule: str
    steps: int | None
    """None: the profile's own step count."""
    restarts: int


ATTACKERS: dict[str, Attacker] = {
    "published": Attacker(schedule="fixed", steps=None, restarts=0),
    "strong": Attacker(schedule="apgd", steps=100, restarts=1),
}
"""published: the paper's fixed-step PGD from the clean image (32 steps). strong: APGD, 100 steps from the clean image
plus one random restart: 200 forward+backward passes per query, a third of PGD 100 steps x 6 starts, and at least as
strong on every attack (docs/method.md#apgd, benchmarks/attack_strength.py)."""

STRONG = "strong"
"""The protocol name of the strong attacker; any other protocol name is a profile under the published attacker."""


def parse_protocols(names: str, default_profile: str) -> list[tuple[str, str, str]]:
    """'rob28,strong' -> [(protocol name, profile, attacker), ...]; `strong` uses `default_profile`'s budget."""
    chosen = []
    for name in (n.strip() for n in names.split(",")):
        if name == STRONG:
            chosen.append((STRONG, default_profile, STRONG))
        elif name in PROFILES:
            chosen.append((name, name, "published"))
        else:
            raise UserError(f"unknown protocol {name[:40]!r}; choose from {', '.join([*PROFILES, STRONG])}")
    if not chosen or len({c[0] for c in chosen}) != len(chosen):
        raise UserError("--protocols needs distinct names, e.g. rob28,strong")
    return chosen


def protocol(profile: str, cfg: PGDConfig, reference_quirks: bool) -> str:
    """The evaluation protocol in words, written into every robustness record and table."""
    starts = 1 + cfg.restarts
    if cfg.schedule == "apgd":
        search = f"APGD {cfg.steps} steps x {starts} start(s)"
    else:
        search = f"alpha {cfg.alpha * 255:.4g}/255, {cfg.steps} steps x {starts} start(s)"
    base = f"{profile} eps {cfg.eps * 255:.4g}/255, {search}"
    if reference_quirks:
        return base + ", reference protocol (last iterate, reference GTM target, LTM self entry, ES:D one step early)"
    return base + ", best iterate, GTM: stronger of the intended and the reference target"


def attack_config(
    profile: str,
    *,
    attacker: str = "published",
    steps: int | None = None,
    restarts: int | None = None,
    eps: float | None = None,
    reference_quirks: bool = False,
) -> PGDConfig:
    """PGD settings for an evaluation: the profile's budget searched by the named attacker; `steps` and `restarts`
    override the attacker's.

    By default every attack keeps, per item, its strongest iterate (and run, with restarts), so more steps or
    restarts can never weaken it. The reference protocol (`reference_quirks`) returns the last iterate of a
    single fixed-step run, as the published numbers did.
    """
    if profile not in PROFILES:
        raise UserError(f"unknown attack profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if attacker not in ATTACKERS:
        raise UserError(f"unknown attacker {attacker!r}; choose one of {', '.join(ATTACKERS)}")
    p, a = PROFILES[profile], ATTACKERS[attacker]
    restarts = a.restarts if restarts is None else restarts
    if reference_quirks and (restarts or a.schedule != "fixed"):
        raise UserError("--reference-quirks follows the reference protocol: fixed-step PGD without restarts")
    n = (a.steps or p.steps) if steps is None else steps
    budget = p.eps if eps is None else eps
    if n < 0 or restarts < 0 or budget < 0:
        raise UserError("steps, restarts and eps must be >= 0")
    return PGDConfig(eps=budget, alpha=p.alpha, steps=n, restarts=restarts, keep_best=not reference_quirks,
                     schedule=a.schedule)
