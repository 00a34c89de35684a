"""Destination hardness H_D for Hardness Manipulation (docs/method.md#destinations), and how HM's adversary pursues it.

A destination turns the clean batch and the source anchors into a per-triplet target hardness, and may learn from
the previous iteration's adversarial loss:

* miner  -- H_D,i = hardness of that miner's triplet i on the clean batch (same anchors as the source).
* const  -- H_D,i = c for every triplet.
* lga    -- Linear Gradual Adversary g_LGA: H_D = -margin * min(l, u) / u, with l the previous adversarial triplet
            loss (initialised to 2.0, so the first destination is -margin).
* boost  -- g_B(miner): H_D,i = H_miner,i + xi * (1 - min(l, u) / u).
* 2      -- the direct min-max (docs/method.md#min-max-hmx2): H_D = 2 is beyond every triplet, so the adversary
            maximises H for every triplet, to the last step (MaximiseHardness).

The pursuit (which triplets move, the PGD objective, the early stop) is the destination's to say: HM asks it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.distributed as dist

from retrieval.errors import UserError
from training.defenses.config import check_miner
from training.losses import hardness
from training.miners import get_miner

INITIAL_LOSS = 2.0
"""The reference initialises the previous loss to 2.0, so the first LGA destination is -margin."""
MAX_HARDNESS = 2.0
"""The constant destination that makes HM the direct min-max: no triplet's hardness d(a,p) - d(a,n) exceeds 2."""
REFERENCE_C2F2_STEPS = 7
"""The reference C2F2 min-max overrides eta to 7 ("larger eta collapses")."""


def hm_objective(target: torch.Tensor):
    """Embeddings of [a; p; n] -> per-triplet min(0, H - H_D)^2: zero (and zero gradient) once H reaches H_D."""

    def objective(z: torch.Tensor) -> torch.Tensor:
        return (hardness(*z.chunk(3)) - target).clamp(max=0).square()

    return objective


def maximise_hardness(z: torch.Tensor) -> torch.Tensor:
    """Embeddings of [a; p; n] -> per-triplet -H."""
    return -hardness(*z.chunk(3))


class Destination:
    """Per-triplet destination hardness; `update` feeds back the adversarial loss of the iteration just done."""

    early_stop: ClassVar[bool] = True
    """PGD stops once the mean objective settles (the reference's rule, training/defenses/hm.py:EARLY_STOP_TOL)."""
    reported: ClassVar[bool] = True
    """Whether the stats report the mean destination hardness."""
    reference_miner_margin: ClassVar[bool] = False
    """Whether the reference mines the source triplets with margin 1.0 instead of the configured margin."""
    reference_steps: ClassVar[dict[str, int]] = {}
    """Model arch -> the eta the reference uses instead of the configured one (reference mode only)."""

    def __call__(self, clean: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def moving(self, h_source: torch.Tensor, h_destination: torch.Tensor) -> torch.Tensor:
        """Triplets the adversary can move: those whose clean hardness is below the destination."""
        return h_source < h_destination

    def objective(self, target: torch.Tensor):
        """The per-triplet objective PGD minimises towards `target` (H_D of the moving triplets)."""
        return hm_objective(target)

    def update(self, adv_loss: float) -> None:
        """Most destinations do not adapt."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore by default."""


class MinerDestination(Destination):
    """Benign hardness of another miner's triplets, anchored at the same images as the source triplets."""

    def __init__(self, miner) -> None:
        self.miner = miner

    def __call__(self, clean: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        a, p, n = self.miner(clean, labels)
        if not torch.equal(a, anchors):
            raise RuntimeError("destination miner returned different anchors from the source miner")
        return hardness(clean[a], clean[p], clean[n])


class ConstantDestination(Destination):
    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, clean: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return clean.new_full((anchors.numel(),), self.value)


class MaximiseHardness(ConstantDestination):
    """HM[X,2], the direct min-max: every triplet moves, PGD minimises -H (the step sign of min(0, H - 2)^2) without
    early stop, and the reference's quirks of min-max apply (miner margin 1.0, eta 7 on C2F2)."""

    early_stop = False
    reported = False
    reference_miner_margin = True
    reference_steps = {"c2f2": REFERENCE_C2F2_STEPS}

    def __init__(self) -> None:
        super().__init__(MAX_HARDNESS)

    def moving(self, h_source: torch.Tensor, h_destination: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(h_source, dtype=torch.bool)

    def objective(self, target: torch.Tensor):
        return maximise_hardness


class GradualDestination(Destination):
    """Shared state of the gradual destinations: the previous adversarial loss, optionally averaged over ranks."""

    def __init__(self, u: float, sync: bool) -> None:
        if u <= 0:
            raise ValueError("the LGA clip u must be positive")
        self.u = u
        self.sync = sync
        self.previous = INITIAL_LOSS

    def progress(self) -> float:
        """The normalised previous loss min(max(l, 0), u) / u in [0, 1]."""
        return min(max(self.previous, 0.0), self.u) / self.u

    def update(self, adv_loss: float) -> None:
        if self.sync and dist.is_available() and dist.is_initialized():
            value = torch.tensor([adv_loss], dtype=torch.float64)
            if dist.get_backend() == "nccl":
                value = value.cuda()
            dist.all_reduce(value)
            adv_loss = float(value) / dist.get_world_size()
        self.previous = float(adv_loss)

    def state_dict(self) -> dict:
        return {"previous_loss": self.previous}

    def load_state_dict(self, state: dict) -> None:
        self.previous = float(state.get("previous_loss", INITIAL_LOSS))


class LGADestination(GradualDestination):
    """g_LGA: the adversary grows linearly harder as the model's adversarial loss falls."""

    def __init__(self, margin: float, u: float, sync: bool) -> None:
        super().__init__(u, sync)
        self.margin = margin

    def current(self) -> float:
        return -self.margin * self.progress()

    def __call__(self, clean: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return clean.new_full((anchors.numel(),), self.current())


class BoostDestination(GradualDestination):
    """g_B(miner): the miner's hardness plus a boost xi that shrinks while the loss is high."""

    def __init__(self, miner, xi: float, u: float, sync: bool) -> None:
        super().__init__(u, sync)
        self.base = MinerDestination(miner)
        self.xi = xi

    def __call__(self, clean: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return self.base(clean, labels, anchors) + self.xi * (1.0 - self.progress())


def parse_constant(text: str) -> float | None:
    """The destination as a number, or None when it is not numeric."""
    try:
        return float(text)
    except ValueError:
        return None


def check_destination(text: str | None) -> None:
    """Reject destination text that build_destination cannot build, with one readable line (UserError)."""
    if text is None:
        raise UserError("HM needs a destination: a miner, a constant in [-2, 2], 'lga' or 'boost:<miner>'")
    value = parse_constant(text)
    if value is not None:
        if not -2.0 <= value <= 2.0:
            raise UserError(f"constant destination hardness must lie in [-2, 2], got {value:g}")
    elif text != "lga":
        check_miner(text.removeprefix("boost:"), "destination")


def build_destination(text: str, *, margin: float, u: float, xi: float, reference: bool, generator=None) -> Destination:
    """A destination from its config text: a miner name or letter, a constant, 'lga' or 'boost:<miner>'.

    The constant 2 (MAX_HARDNESS) is the direct min-max. `reference` keeps the LGA state per process and its
    hard-coded -0.2 (instead of -margin).
    """
    value = parse_constant(text)
    if value == MAX_HARDNESS:
        return MaximiseHardness()
    if value is not None:
        return ConstantDestination(value)
    if text == "lga":
        return LGADestination(0.2 if reference else margin, u, sync=not reference)
    if text.startswith("boost:"):
        miner = get_miner(text.removeprefix("boost:"), margin=margin, reference=reference, generator=generator)
        return BoostDestination(miner, xi, u, sync=not reference)
    return MinerDestination(get_miner(text, margin=margin, reference=reference, generator=generator))
