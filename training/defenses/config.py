"""DefenseConfig, every training method of the paper as one explicit configuration (docs/method.md#baselines), the
registry of defenses by config key, and the rules a configuration must follow before any defense is built.

A defense declares what it accepts on its class (training/defenses/base.py: key, notation, destination, ICS, extra
checks) and registers itself by subclassing `Defense`, so `validate` and the notation read the same facts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from retrieval.errors import UserError
from retrieval.robustness.pgd import SCHEDULES
from training.miners import LETTERS, MINERS

if TYPE_CHECKING:
    from training.defenses.base import Defense

DEFENSES: dict[str, type[Defense]] = {}
"""Every defense by its config key (none, est, act, hm, minmax); filled as each Defense subclass is defined."""


@dataclass
class DefenseConfig:
    defense: str = "none"
    """none | est | act | minmax | hm"""
    source: str = "random"
    """Miner for none/est/act/minmax, and HM's source miner (name or paper letter)."""
    destination: str | None = None
    """HM only: a miner name, a constant in [-2, 2] (as text), 'lga', or 'boost:<miner>' (g_B with xi)."""
    xi: float = 0.1
    """g_B boost: H_D = H_miner + xi * (1 - normalised previous loss)."""
    ics: float = 0.0
    """ICS weight lambda (0 = off)."""
    pgd_steps: int | None = None
    """Training PGD steps eta; None = the paper's default (32)."""
    random_start: bool = False
    """Start the training adversary from a uniform point of the eps-ball instead of the clean image (Madry-style;
    notation suffix +RS)."""
    early_stop: bool = True
    """HM's early stop once the mean objective settles; off, the adversary takes all eta steps (notation +FULL)."""
    schedule: str = "fixed"
    """How the training adversary steps: 'fixed' (eta sign steps of alpha) or 'apgd' (APGD's step size, from 2 eps
    and halved when progress stalls, with momentum; eta steps, no early stop; notation +APGD)."""
    eps: float | None = None
    """L-inf budget; None = the training budget of the model's input-size protocol."""
    alpha: float | None = None
    """PGD step size; None = the training budget of the model's input-size protocol."""
    lga_u: float = 0.2
    """LGA clip u (= margin)."""
    margin: float = 0.2
    reference: bool = False
    """Reproduce the reference implementation's quirks (docs/method.md#reference-quirks) for comparable numbers."""
    precision: str = "auto"
    """PGD precision inside the defense: auto | fp32 | bf16. auto = bf16 autocast where the hardware runs it fast
    and benchmarks/train_speed.py showed it leaves the adversary as strong (HM, ACT, min-max), else fp32 (EST, and
    with `reference`)."""

    def to_dict(self) -> dict:
        return asdict(self)


def defense_class(key: str) -> type[Defense]:
    """The registered defense for a config key, or a UserError listing the keys."""
    if key not in DEFENSES:
        raise UserError(f"unknown defense {key!r}; choose one of: {', '.join(DEFENSES)}")
    return DEFENSES[key]


def check_miner(text: str, what: str) -> None:
    if LETTERS.get(text, text) not in MINERS:
        valid = ", ".join(f"{letter}/{name}" for letter, name in LETTERS.items())
        raise UserError(f"unknown {what} miner {text!r}; choose one of: {valid}")


def validate(cfg: DefenseConfig) -> None:
    """Reject a configuration that no defense can run, with one readable line (UserError)."""
    defense = defense_class(cfg.defense)
    check_miner(cfg.source, "source")
    if cfg.destination is not None and not defense.takes_destination:
        raise UserError(f"--destination applies to HM only, not to {cfg.defense}")
    defense.check(cfg)
    if cfg.ics < 0:
        raise UserError(f"ICS weight must be >= 0, got {cfg.ics:g}")
    if cfg.ics and not defense.ics_applies:
        raise UserError(f"ICS needs an adversarial anchor: use it with HM, not {cfg.defense}")
    if cfg.pgd_steps is not None and cfg.pgd_steps < 1:
        raise UserError(f"PGD steps must be >= 1, got {cfg.pgd_steps}")
    for name in ("eps", "alpha"):
        value = getattr(cfg, name)
        if value is not None and not 0 <= value <= 1:
            raise UserError(f"{name} must lie in [0, 1] (images are in [0, 1]), got {value:g}")
    if cfg.margin < 0 or cfg.lga_u <= 0:
        raise UserError("margin must be >= 0 and the LGA clip u must be > 0")
    if cfg.schedule not in SCHEDULES:
        raise UserError(f"PGD schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    if cfg.schedule == "apgd" and cfg.reference:
        raise UserError("the APGD training adversary is not the reference's; drop +APGD or --reference-quirks")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"precision must be auto, fp32 or bf16, got {cfg.precision!r}")
