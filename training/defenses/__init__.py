"""Training strategies (docs/method.md): every method of the paper is one DefenseConfig, built by build_defense.

Each defense is one class that registers itself by subclassing `Defense` with a `key` (training/defenses/base.py);
its notation, the config fields it reads and its own checks are class attributes, which the registry
(base.DEFENSES), validation (base.validate) and the paper notation (notation.py) read. Adding a defense: one
file here defining the class, imported below, and its section in docs/method.md.

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

from training.defenses.base import DEFENSES, Defense, validate
from training.defenses.config import DefenseConfig
from training.defenses.none import NoDefense  # noqa: F401  (each import registers its defenses, in this order)
from training.defenses.est import EmbeddingShiftedTriplet  # noqa: F401
from training.defenses.act import AntiCollapse  # noqa: F401
from training.defenses.hm import HardnessManipulation, MinMax  # noqa: F401


def build_defense(cfg: DefenseConfig, *, generator: torch.Generator | None = None) -> Defense:
    """The defense for a validated config."""
    validate(cfg)
    return DEFENSES[cfg.defense](cfg, generator=generator)


__all__ = ["DEFENSES", "Defense", "DefenseConfig", "build_defense", "validate"]
