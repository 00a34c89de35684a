"""The Destination interface (docs/method.md#destinations), its registry, and what the gradual destinations share.

A destination turns the clean batch and the source anchors into a per-triplet target hardness H_D, may learn from
the previous iteration's adversarial loss, and says how HM's adversary pursues it (which triplets move, the PGD
objective, the early stop). Each one also reads and writes itself: DefenseConfig.destination text ("lga",
"boost:softhard", "0.5", a miner) and the paper notation's DEST ("gLGA", "gB(S)", "0.5", "S").
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.distributed as dist

from retrieval.registry import Registered, Registry
from training.losses import hardness

DESTINATIONS = Registry("destination", key="kind")
"""Every destination by kind; those with a `grammar` in the order the notation's grammar lists them."""
INITIAL_LOSS = 2.0
"""The reference initialises the previous loss to 2.0, so the first LGA destination is -margin."""


def hm_objective(target: torch.Tensor):
    """Embeddings of [a; p; n] -> per-triplet min(0, H - H_D)^2: zero (and zero gradient) once H reaches H_D."""

    def objective(z: torch.Tensor) -> torch.Tensor:
        return (hardness(*z.chunk(3)) - target).clamp(max=0).square()

    return objective


class Destination(Registered):
    """Per-triplet destination hardness; `update` feeds back the adversarial loss of the iteration just done.

    A subclass that sets `kind` registers itself in DESTINATIONS; the config text it `reads`, its `check`, `build`,
    and its paper notation (`to_notation`, `from_notation`, `grammar`) are all it takes to add one.
    """

    registry = DESTINATIONS
    kind: ClassVar[str]
    grammar: ClassVar[str | None]
    """How the notation's grammar shows it (DEST := ...); None when another destination's form writes it."""
    early_stop: ClassVar[bool] = True
    """PGD stops once the mean objective settles (the reference's rule, training/defenses/hm.py:EARLY_STOP_TOL)."""
    reported: ClassVar[bool] = True
    """Whether the stats report the mean destination hardness."""
    reference_miner_margin: ClassVar[bool] = False
    """Whether the reference mines the source triplets with margin 1.0 instead of the configured margin."""
    reference_steps: ClassVar[dict[str, int]] = {}
    """Model arch -> the eta the reference uses instead of the configured one (reference mode only)."""

    # -- reading and writing it ----------------------------------------------------------------------------------

    @classmethod
    def reads(cls, text: str) -> bool:
        """Whether DefenseConfig.destination `text` names this destination."""
        raise NotImplementedError

    @classmethod
    def check(cls, text: str) -> None:
        """Reject config text of this destination that cannot be built (UserError)."""

    @classmethod
    def build(cls, text: str, *, margin: float, u: float, xi: float, reference: bool, generator) -> Destination:
        """The destination for its (checked) config text and the defense's margin, LGA clip u and boost xi."""
        raise NotImplementedError

    @classmethod
    def to_notation(cls, text: str) -> str:
        """Config text -> the notation's DEST."""
        raise NotImplementedError

    @classmethod
    def from_notation(cls, dest: str) -> str | None:
        """The notation's DEST -> config text, None when `dest` is not this destination's form; ValueError(why)
        when it is, but malformed."""
        return None

    # -- what HM asks of it --------------------------------------------------------------------------------------

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


def parse_constant(text: str) -> float | None:
    """The destination as a number, or None when it is not numeric."""
    try:
        return float(text)
    except ValueError:
        return None


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
