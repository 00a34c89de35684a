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

from retrieval.robustness.pgd import PGDConfig, PGDResult, auto_precision, frozen, pgd, unwrap
from retrieval.protocol import protocol_for
from training.defenses.config import DEFENSES, DefenseConfig
from training.defenses.notation import format_method
from training.miners import Miner, get_miner

DEFAULT_STEPS = 32
REFERENCE_MINER_MARGIN = 1.0
"""The reference calls the miner with the Euclidean margin for ACT, EST and min-max (docs/method.md#reference-quirks)."""

Stats = dict[str, float]


class Defense:
    """One training method. Subclasses implement `__call__`; state (e.g. LGA's previous loss) goes in state_dict.

    A subclass that sets `key` registers itself in DEFENSES under it; validation (config.validate), the paper notation
    (notation.py) and build_defense read everything else they need from the class attributes below.
    """

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

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "key" in cls.__dict__:
            DEFENSES[cls.key] = cls

    @classmethod
    def check(cls, cfg: DefenseConfig) -> None:
        """Rules of this defense beyond config.validate's shared ones; raise UserError."""

    def __init__(self, cfg: DefenseConfig, *, generator: torch.Generator | None = None) -> None:
        self.cfg = cfg
        self.generator = generator
        self.name = format_method(cfg)
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
