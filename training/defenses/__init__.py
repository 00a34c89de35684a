"""Training strategies (docs/method.md): every method of the paper is one DefenseConfig, built by build_defense.

`DefenseConfig.reference = True` reproduces the reference implementation instead of the intended behaviour. It
changes exactly these things:

* Miners are built with `reference=True`: no clamp before the sqrt of the distance matrix (duplicates can give NaN)
  and Softhard may return the anchor as its own positive.
* ACT, EST and min-max call their miner with margin 1.0 instead of `margin` (matters for Semihard only).
* LGA (and g_B) keep the previous adversarial loss per process instead of averaging it over DDP ranks, and LGA's
  destination is -0.2 * l / u with the hard-coded 0.2 instead of -margin * l / u.
* Min-max on C2F2 overrides eta with 7.
* EST makes the reference's extra no-grad "logging" forward in train mode, which updates BatchNorm running
  statistics of models whose BatchNorm is training. (User-facing list: docs/method.md#reference-quirks.)

Everything else is shared: no random start, no benign term, eval mode during PGD, FGSM step eps when eta = 1, HM's
early stop at 1e-7 and its per-copy perturbation of images that appear in several roles.
"""

from __future__ import annotations

import torch

from training.defenses.act import AntiCollapse
from training.defenses.base import Defense
from training.defenses.config import DefenseConfig
from training.defenses.est import EmbeddingShift
from training.defenses.hm import HardnessManipulation
from training.defenses.lga import parse_constant
from training.defenses.minmax import MAX_HARDNESS, MinMax
from training.defenses.none import Regular
from training.defenses.validate import validate

REGISTRY: dict[str, type[Defense]] = {
    "none": Regular,
    "est": EmbeddingShift,
    "act": AntiCollapse,
    "minmax": MinMax,
    "hm": HardnessManipulation,
}


def build_defense(cfg: DefenseConfig, *, generator: torch.Generator | None = None) -> Defense:
    """The defense for a validated config. HM with the constant destination 2 is the dedicated min-max."""
    validate(cfg)
    kind = cfg.defense
    if kind == "hm" and parse_constant(cfg.destination) == MAX_HARDNESS:
        kind = "minmax"
    return REGISTRY[kind](cfg, generator=generator)


__all__ = ["REGISTRY", "Defense", "DefenseConfig", "build_defense"]
