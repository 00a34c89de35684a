"""The Defense interface and what every training strategy shares: PGD budget, clean mining forward, statistics.

A defense turns one SPC-2 batch into the loss to back-propagate. Its attack runs through `retrieval.robustness.pgd.pgd` (eval
mode, no parameter gradients); its training forward runs through the model as given, in train mode, so a DDP wrapper
synchronises the gradients. Every defense makes exactly one training forward per iteration (DDP expects one).

Stats each call returns (keys that do not apply to a defense are absent):
  loss, adv_loss, ics_loss              the total, the adversarial triplet loss, the unweighted ICS term
  hardness_source / _destination / _adv mean H of the source triplets (clean), of H_D, of the perturbed triplets
  perturbed_fraction                    triplets with at least one image moved by PGD
  pgd_steps                             PGD steps taken (HM's early stop can end sooner)
  lga_destination                       the LGA H_D used this iteration
  image_passes                          images through forward+backward (PGD steps and the training pass); the
                                        no-grad forwards (mining, PGD's final evaluation) are not counted
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from retrieval.errors import UserError
from retrieval.protocol import protocol_for
from retrieval.registry import Registered, Registry
from retrieval.robustness.pgd import SCHEDULES, PGDConfig, PGDResult, auto_precision, frozen, pgd, unwrap
from training.defenses.config import DefenseConfig
from training.miners import Miner, check_miner, get_miner

DEFAULT_STEPS = 32
REFERENCE_MINER_MARGIN = 1.0
"""The reference calls the miner with the Euclidean margin for ACT, EST and min-max (docs/method.md#reference-quirks)."""

Stats = dict[str, float]

DEFENSES = Registry("defense", key="key")
"""Every defense by its config key (none, est, act, hm, minmax), in the order training/defenses/__init__.py imports
them."""


class Defense(Registered):
    """One training method. Subclasses implement `__call__`; state (e.g. LGA's previous loss) goes in state_dict.

    A subclass that sets `key` registers itself in DEFENSES under it; validation (`validate` below), the paper notation
    (notation.py) and build_defense read everything else they need from the class attributes below.
    """

    registry = DEFENSES
    key: ClassVar[str]
    """DefenseConfig.defense of this method (none, est, act, hm, minmax)."""
    notation: ClassVar[str]
    """The paper's name for the method in the notation, e.g. "HM" in HM[S,gLGA]."""
    takes_destination: ClassVar[bool] = False
    """Whether DefenseConfig.destination is read (HM[X,DEST]); other defenses refuse one."""
    fixed_destination: ClassVar[str | None] = None
    """A destination the notation always shows for this defense: min-max is HM[X,2] under its own key."""
    ics_applies: ClassVar[bool] = False
    """Whether ICS can be added: it needs an adversarial anchor (docs/method.md#intra-class-structure-loss-ics)."""
    trains_batchnorm: ClassVar[bool] = False
    """Whether BatchNorm trains in batch-statistics mode; otherwise it stays frozen on its running statistics."""
    bf16_safe: ClassVar[bool] = True
    """Whether precision `auto` may run this defense's PGD in bf16 (measured in benchmarks/train_speed.py)."""

    @classmethod
    def check(cls, cfg: DefenseConfig) -> None:
        """Rules of this defense beyond `validate`'s shared ones; raise UserError."""

    def __init__(self, cfg: DefenseConfig, *, generator: torch.Generator | None = None) -> None:
        self.cfg = cfg
        self.generator = generator
        self.eta = cfg.pgd_steps if cfg.pgd_steps is not None else DEFAULT_STEPS

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        raise NotImplementedError

    def paper_cost(self) -> int:
        """The paper's training cost eta + 1 (forward+backward passes per iteration, docs/method.md#training-budgets-and-cost)."""
        return self.eta + 1

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Stateless by default."""

    def budget(self, model: nn.Module) -> tuple[float, float]:
        """(eps, alpha): the configured values, else the training budget of the model's input-size protocol."""
        return protocol_for(unwrap(model).input_size).training_budget(self.cfg.eps, self.cfg.alpha)

    def precision(self, device: torch.device) -> str:
        """The configured PGD precision, with `auto` resolved for this defense and device."""
        if self.cfg.precision != "auto":
            return self.cfg.precision
        return auto_precision(device) if self.bf16_safe and not self.cfg.reference else "fp32"

    def attack(self, model: nn.Module, x: torch.Tensor, objective, *, early_stop_tol: float | None = None) -> PGDResult:
        """PGD (docs/method.md#pgd) at this defense's budget, eta steps, schedule, start and precision."""
        eps, alpha = self.budget(model)
        cfg = PGDConfig(eps, alpha, self.eta, random_start=self.cfg.random_start, early_stop_tol=early_stop_tol,
                        precision=self.precision(x.device), schedule=self.cfg.schedule)
        return pgd(model, x, objective, cfg, generator=self.generator)


def validate(cfg: DefenseConfig) -> None:
    """Reject a configuration that no defense can run, with one readable line (UserError)."""
    defense = DEFENSES.lookup(cfg.defense)
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


def source_miner(cfg: DefenseConfig, generator: torch.Generator | None, *, reference_margin: bool) -> Miner:
    """The configured miner; `reference_margin`: the reference mines with margin 1.0 (ACT, EST, min-max)."""
    margin = REFERENCE_MINER_MARGIN if cfg.reference and reference_margin else cfg.margin
    return get_miner(cfg.source, margin=margin, reference=cfg.reference, generator=generator)


def clean_embeddings(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Embeddings for mining: eval mode, no gradients of any kind (HM's step 1)."""
    with frozen(model) as net, torch.no_grad():
        return net(images)


def train_forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The one forward with parameter gradients, through the (possibly DDP-wrapped) model in train mode."""
    model.train()
    return model(images)


def moved_triplets(x_adv: torch.Tensor, x0: torch.Tensor, roles: int) -> torch.Tensor:
    """Per triplet, whether any of its `roles` stacked image copies ([role0 x N; role1 x N; ...]) changed."""
    moved = (x_adv != x0).flatten(1).any(dim=1)
    return moved.view(roles, -1).any(dim=0)


def mean(t: torch.Tensor) -> float:
    return float(t.detach().float().mean()) if t.numel() else 0.0
