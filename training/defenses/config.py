"""DefenseConfig, every training method of the paper as one explicit configuration (docs/method.md#baselines).

This module is data only: the defenses register themselves beside their base class (training/defenses/base.py:
DEFENSES), where the rules a configuration must follow (`validate`) read what each defense declares.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
