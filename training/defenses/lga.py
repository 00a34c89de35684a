"""Destination hardness H_D for Hardness Manipulation (docs/method.md#destinations).

A destination turns the clean batch and the source anchors into a per-triplet target hardness, and may learn from
the previous iteration's adversarial loss:

* miner  -- H_D,i = hardness of that miner's triplet i on the clean batch (same anchors as the source).
* const  -- H_D,i = c for every triplet.
* lga    -- Linear Gradual Adversary g_LGA: H_D = -margin * min(l, u) / u, with l the previous adversarial triplet
            loss (initialised to 2.0, so the first destination is -margin).
* boost  -- g_B(miner): H_D,i = H_miner,i + xi * (1 - min(l, u) / u).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from training.losses import hardness
from training.miners import get_miner

INITIAL_LOSS = 2.0
"""The reference initialises the previous loss to 2.0, so the first LGA destination is -margin."""


class Destination:
    """Per-triplet destination hardness; `update` feeds back the adversarial loss of the iteration just done."""

    def __call__(self, clean: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

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


def build_destination(text: str, *, margin: float, u: float, xi: float, reference: bool, generator=None) -> Destination:
    """A destination from its config text: a miner name or letter, a constant, 'lga' or 'boost:<miner>'.

    `reference` keeps the LGA state per process and its hard-coded -0.2 (instead of -margin).
    """
    value = parse_constant(text)
    if value is not None:
        return ConstantDestination(value)
    if text == "lga":
        return LGADestination(0.2 if reference else margin, u, sync=not reference)
    if text.startswith("boost:"):
        miner = get_miner(text.removeprefix("boost:"), margin=margin, reference=reference, generator=generator)
        return BoostDestination(miner, xi, u, sync=not reference)
    return MinerDestination(get_miner(text, margin=margin, reference=reference, generator=generator))
