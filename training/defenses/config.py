"""DefenseConfig: every training method of the paper as one explicit configuration (docs/method.md#baselines)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

DEFENSES = ("none", "est", "act", "minmax", "hm")


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
    eps: float | None = None
    """L-inf budget; None = 77/255 for 28x28 inputs, 8/255 for 224x224."""
    alpha: float | None = None
    """PGD step size; None = 3/255 for 28x28 inputs, 1/255 for 224x224."""
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
