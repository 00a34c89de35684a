"""Training checkpoints: everything needed for a resumed run to end with the same weights as an uninterrupted one.

A checkpoint holds only tensors and plain Python values (no pickled objects), so it loads with
torch.load(weights_only=True): model and optimizer state dicts, the position (epoch, batch inside the epoch, step),
the validation records so far, and per process the random generator states (torch's global ones and the defense's
miner generator) and the defense state (e.g. LGA's previous loss). Writes are atomic: a crash leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retrieval.atomic import atomic_path
from retrieval.errors import UserError

FORMAT = 1
CHECKPOINT_FILE = "checkpoint.pt"
KEYS = ("format", "config", "model", "optimizer", "position", "processes", "validations")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` (with the KEYS above) atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def read_checkpoint(
    path: str | Path, *, keys: tuple[str, ...] = ("model", "config"), kind: str = "robust-retrieval checkpoint"
) -> dict[str, Any]:
    """Read a checkpoint onto the CPU without pickle; a missing, truncated or foreign file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read checkpoint {path}: it is truncated or corrupt ({_reason(exc)})") from None
    if not isinstance(state, dict) or any(key not in state for key in keys):
        raise UserError(f"{path} is not a {kind} (needs {', '.join(keys)})")
    return state


def _reason(exc: BaseException) -> str:
    """A short cause: torch's weights-only refusal would advise loading untrusted pickles, which we never do."""
    text = str(exc).strip()
    if text.startswith("Weights only load failed"):
        return "not a tensors-only torch file"
    return text.splitlines()[0][:160] if text else type(exc).__name__


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint to resume from (all KEYS, this FORMAT)."""
    if not Path(path).is_file():
        raise UserError(f"no checkpoint at {path}; nothing to resume")
    kind = f"robust-retrieval training checkpoint (format {FORMAT})"
    state = read_checkpoint(path, keys=KEYS, kind=kind)
    if state["format"] != FORMAT:
        raise UserError(f"{path} is not a {kind}")
    return state


@dataclass
class Trained:
    model: nn.Module
    """Eval-mode model with the checkpoint's weights."""
    config: dict[str, Any]
    """The training configuration stored in the checkpoint."""
    checkpoint: Path
    run_dir: Path | None
    """The run directory (None for a bare checkpoint file named other than checkpoint.pt)."""


def load_trained(path: str | Path) -> Trained:
    """The trained model of a run directory or a checkpoint file, for evaluate and export."""
    from training.models import build_model  # late: keeps `--help` fast

    path = Path(path)
    if path.is_dir():
        checkpoint = path / CHECKPOINT_FILE
        if not checkpoint.is_file():
            raise UserError(f"run directory {path} has no {CHECKPOINT_FILE}")
    elif path.is_file():
        checkpoint = path
    else:
        raise UserError(f"{path} is neither a run directory nor a checkpoint file")
    state = read_checkpoint(checkpoint)
    config = state["config"]
    arch = config.get("arch") or config.get("model")  # TrainConfig says `model`; bare checkpoints may say `arch`
    if not arch or "embedding_dim" not in config:
        raise UserError(f"{checkpoint} config lacks the architecture or embedding_dim")
    model = build_model(arch, embedding_dim=int(config["embedding_dim"]), pretrained=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise UserError(f"{checkpoint} does not fit a {arch} model ({str(exc).splitlines()[0]})") from None
    run_dir = checkpoint.parent if path.is_dir() or checkpoint.name == CHECKPOINT_FILE else None
    return Trained(model.eval(), {**config, "arch": arch}, checkpoint, run_dir)


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
