"""Reject a DefenseConfig that no defense can run, with one readable line (UserError)."""

from __future__ import annotations

from retrieval.errors import UserError
from training.defenses.config import DEFENSES, DefenseConfig
from training.defenses.lga import parse_constant
from training.miners import LETTERS, MINERS

ICS_DEFENSES = ("hm", "minmax")
"""ICS needs an adversarial anchor (docs/method.md#intra-class-structure-loss-ics): regular training, EST's re-mined batch and ACT have none."""


def check_miner(text: str, what: str) -> None:
    if LETTERS.get(text, text) not in MINERS:
        valid = ", ".join(f"{letter}/{name}" for letter, name in LETTERS.items())
        raise UserError(f"unknown {what} miner {text!r}; choose one of: {valid}")


def check_destination(text: str | None) -> None:
    if text is None:
        raise UserError("HM needs a destination: a miner, a constant in [-2, 2], 'lga' or 'boost:<miner>'")
    value = parse_constant(text)
    if value is not None:
        if not -2.0 <= value <= 2.0:
            raise UserError(f"constant destination hardness must lie in [-2, 2], got {value:g}")
    elif text != "lga":
        check_miner(text.removeprefix("boost:"), "destination")


def validate(cfg: DefenseConfig) -> None:
    if cfg.defense not in DEFENSES:
        raise UserError(f"unknown defense {cfg.defense!r}; choose one of: {', '.join(DEFENSES)}")
    check_miner(cfg.source, "source")
    if cfg.defense == "hm":
        check_destination(cfg.destination)
    elif cfg.destination is not None:
        raise UserError(f"--destination applies to HM only, not to {cfg.defense}")
    if cfg.ics < 0:
        raise UserError(f"ICS weight must be >= 0, got {cfg.ics:g}")
    if cfg.ics and cfg.defense not in ICS_DEFENSES:
        raise UserError(f"ICS needs an adversarial anchor: use it with HM, not {cfg.defense}")
    if cfg.pgd_steps is not None and cfg.pgd_steps < 1:
        raise UserError(f"PGD steps must be >= 1, got {cfg.pgd_steps}")
    for name in ("eps", "alpha"):
        value = getattr(cfg, name)
        if value is not None and not 0 <= value <= 1:
            raise UserError(f"{name} must lie in [0, 1] (images are in [0, 1]), got {value:g}")
    if cfg.margin < 0 or cfg.lga_u <= 0:
        raise UserError("margin must be >= 0 and the LGA clip u must be > 0")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"precision must be auto, fp32 or bf16, got {cfg.precision!r}")
