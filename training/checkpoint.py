"""Training checkpoints: everything needed for a resumed run to end with the same weights as an uninterrupted one.

A checkpoint holds only tensors and plain Python values (no pickled objects), so it loads with
torch.load(weights_only=True): model and optimizer state dicts, the position (epoch, batch inside the epoch, step),
the validation records so far, and per process the random generator states (torch's global ones and the defense's
miner generator) and the defense state (e.g. LGA's previous loss). Writes are atomic: a crash leaves the previous
checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from retrieval.atomic import atomic_path
from retrieval.errors import UserError
from retrieval.models.loading import read_checkpoint

FORMAT = 1
KEYS = ("format", "config", "model", "optimizer", "position", "processes", "validations")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` (with the KEYS above) atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint to resume from (all KEYS, this FORMAT)."""
    if not Path(path).is_file():
        raise UserError(f"no checkpoint at {path}; nothing to resume")
    kind = f"robust-retrieval training checkpoint (format {FORMAT})"
    state = read_checkpoint(path, keys=KEYS, kind=kind)
    if state["format"] != FORMAT:
        raise UserError(f"{path} is not a {kind}")
    return state


def rng_state(defense_generator: torch.Generator) -> dict[str, Any]:
    """This process's random streams: torch's global CPU and CUDA generators and the defense's generator."""
    state = {"torch": torch.get_rng_state(), "defense": defense_generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], defense_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    defense_generator.set_state(state["defense"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
