"""The paper's two input-size protocols (docs/method.md#training-budgets-and-cost) and every table they own.

The paper trains and evaluates 28x28 greyscale models (MNIST, Fashion-MNIST) and 224x224 photo models (CUB, CARS,
SOP) under different rules: the optimiser defaults, the training budget, the evaluation profile and how an image is
decoded all change together. Training, evaluation, export and serving ask `protocol_for(input_size)`, so a model of
any side is trained, evaluated, exported and served under the same one.

Words, each for one thing: a *protocol* is one of those two rule sets; its *evaluation profile* (rob28, rob224) is
the attack budget ERS is measured at; an *attacker* (published, strong) is how hard a budget is searched; and what
`evaluate --protocols` names is one measurement: a profile under the published attacker, or `strong`.
`attack_config` turns them into the PGD settings of every attack: evaluate's, the study's, validation's and /probe's.

No torch at import time: the decoding processes read the decode caps and resize ratio from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from retrieval.errors import UserError

if TYPE_CHECKING:
    from retrieval.robustness.pgd import PGDConfig

SMALL_INPUT_MAX = 64
"""Largest side under the 28x28 protocol: thumbnail-scale inputs, where a 256->224-style crop would cut content
the model needs (docs/method.md#training-budgets-and-cost says why 64)."""
FILE_MAX_PIXELS = 40_000_000
"""Largest image decoded from a local file (datasets, `index --images`) unless the caller says otherwise; uploads
to the service are capped by their protocol's `max_pixels`."""


@dataclass(frozen=True)
class EvaluationProfile:
    """The attack budget of the Empirical Robustness Score (docs/method.md#ranking-attacks)."""

    name: str
    eps: float
    alpha: float
    steps: int
    batch_size: int
    """Queries per batch in the reference (valbatchsize): results are means of per-batch means."""


@dataclass(frozen=True)
class Attacker:
    """How hard a profile's budget is searched: the PGD schedule, steps and random restarts."""

    schedule: str
    steps: int | None
    """None: the profile's own step count."""
    restarts: int


@dataclass(frozen=True)
class Protocol:
    name: str
    evaluation: EvaluationProfile
    """The evaluation profile that measures ERS for this protocol."""
    train_eps: float
    train_alpha: float
    """Training PGD budget used where the configuration leaves eps or alpha unset."""
    optimiser: dict[str, Any]
    """TrainConfig defaults of the paper's optimiser protocol: Adam with coupled weight decay, SPC-2 pairs per batch
    and per process, anchor-epochs, and how often and in what batches validation runs."""
    resize_ratio: tuple[int, int] | None
    """Decoding: resize to 256/224 of the side, then centre crop (random crop + flip in training); None: a direct
    resize and no augmentation."""
    max_pixels: int
    """Largest uploaded image decoded by default: ample for the model's input, small enough to decode quickly."""

    def training_budget(self, eps: float | None, alpha: float | None) -> tuple[float, float]:
        """(eps, alpha): the configured values where given, this protocol's otherwise."""
        return (self.train_eps if eps is None else eps, self.train_alpha if alpha is None else alpha)

    def resized_side(self, size: int) -> int:
        """The side an image is resized to before its centre (or random) `size` x `size` crop."""
        resize, crop = self.resize_ratio
        return round(size * resize / crop)


SMALL = Protocol(
    "28x28", EvaluationProfile("rob28", eps=77 / 255, alpha=3 / 255, steps=32, batch_size=128),  # MNIST, F-MNIST
    train_eps=77 / 255, train_alpha=3 / 255,
    optimiser={"lr": 1e-3, "weight_decay": 1e-7, "batch_pairs": 128, "epochs": 8, "val_every": 1, "val_batch": 128},
    resize_ratio=None, max_pixels=2048 * 2048,
)
LARGE = Protocol(
    "224x224", EvaluationProfile("rob224", eps=8 / 255, alpha=3 / 255, steps=32, batch_size=112),  # CUB, CARS, SOP
    train_eps=8 / 255, train_alpha=1 / 255,
    optimiser={"lr": 1e-5, "weight_decay": 4e-4, "batch_pairs": 56, "epochs": 75, "val_every": 5, "val_batch": 112},
    resize_ratio=(256, 224), max_pixels=4096 * 4096,
)

PROFILES: dict[str, EvaluationProfile] = {p.evaluation.name: p.evaluation for p in (SMALL, LARGE)}
"""The evaluation profiles by name (`evaluate --profile`)."""

ATTACKERS: dict[str, Attacker] = {
    "published": Attacker(schedule="fixed", steps=None, restarts=0),
    "strong": Attacker(schedule="apgd", steps=100, restarts=1),
}
"""published: the paper's fixed-step PGD from the clean image (32 steps). strong: APGD, 100 steps from the clean image
plus one random restart: 200 forward+backward passes per query, a third of PGD 100 steps x 6 starts, and at least as
strong on every attack (docs/method.md#apgd, benchmarks/attack_strength.py)."""

STRONG = "strong"
"""The measurement name of the strong attacker; any other name `evaluate --protocols` takes is a profile under the
published attacker."""


def protocol_for(input_size: int) -> Protocol:
    """The protocol of a model whose input is `input_size` x `input_size` pixels."""
    if input_size <= 0:
        raise ValueError(f"input size must be positive, not {input_size}")
    return SMALL if input_size <= SMALL_INPUT_MAX else LARGE


def parse_protocols(names: str, default_profile: str) -> list[tuple[str, str, str]]:
    """'rob28,strong' -> [(measurement name, profile, attacker), ...]; `strong` uses `default_profile`'s budget."""
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


def describe_attack(profile: str, cfg: PGDConfig, reference_quirks: bool) -> str:
    """The measurement in words, written into every robustness record and table (their "protocol")."""
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
    reach_edge: bool = False,
) -> PGDConfig:
    """PGD settings for an attack: the profile's budget searched by the named attacker; `steps`, `restarts` and `eps`
    override the attacker's and the profile's.

    By default every attack keeps, per item, its strongest iterate (and run, with restarts), so more steps or
    restarts can never weaken it. The reference protocol (`reference_quirks`) returns the last iterate of a
    single fixed-step run, as the published numbers did. `reach_edge` raises the fixed step size so that a few
    steps can still cross the ball (/probe's short attacks).
    """
    from retrieval.robustness.pgd import PGDConfig  # late: this module is imported where torch is not

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
    alpha = max(p.alpha, 2.5 * budget / max(1, n)) if reach_edge else p.alpha
    return PGDConfig(eps=budget, alpha=alpha, steps=n, restarts=restarts, keep_best=not reference_quirks,
                     schedule=a.schedule)
