"""The one model loader: the trained model of a run directory, a checkpoint file or a model bundle.

`evaluate` and `export` load runs and checkpoints, the service loads bundles (for /probe's gradients); all three
rebuild the architecture with `build_model` and load the stored weights the same way, so a model that evaluates is
the model that serves. Checkpoints are read without pickle (torch.load(weights_only=True)), bundles after their
manifest's sha256 sums are verified.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retrieval.errors import UserError
from retrieval.models import build_model
from retrieval.models.bundle import MANIFEST_FILE, Bundle

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class Trained:
    model: nn.Module
    """Eval-mode model with the stored weights."""
    config: dict[str, Any]
    """The training configuration stored in the checkpoint, or the bundle's config.json."""
    weights: Path
    """The file the weights came from: a checkpoint, or a bundle's weights.safetensors."""
    run_dir: Path | None
    """The run directory (None for a bundle or a bare checkpoint file named other than checkpoint.pt)."""
    position: dict[str, Any]
    """Where the stored training stopped (step, seconds, image passes): what a run started from it (--init) adds
    to its own cost; empty for a bundle."""


def load_trained(path: str | Path) -> Trained:
    """The trained model of a run directory, a checkpoint file or a model bundle directory."""
    path = Path(path)
    if path.is_dir() and not (path / CHECKPOINT_FILE).is_file() and (path / MANIFEST_FILE).is_file():
        return _from_bundle(Bundle.load(path))
    if path.is_dir():
        checkpoint = path / CHECKPOINT_FILE
        if not checkpoint.is_file():
            raise UserError(f"run directory {path} has no {CHECKPOINT_FILE} (nor is it a model bundle)")
    elif path.is_file():
        checkpoint = path
    else:
        raise UserError(f"{path} is neither a run directory, a checkpoint file nor a model bundle")
    state = read_checkpoint(checkpoint)
    config = state["config"]
    arch = config.get("arch") or config.get("model")  # TrainConfig says `model`; bare checkpoints may say `arch`
    if not arch or "embedding_dim" not in config:
        raise UserError(f"{checkpoint} config lacks the architecture or embedding_dim")
    model = _rebuilt(arch, int(config["embedding_dim"]), state["model"], checkpoint)
    run_dir = checkpoint.parent if path.is_dir() or checkpoint.name == CHECKPOINT_FILE else None
    return Trained(model, {**config, "arch": arch}, checkpoint, run_dir, state.get("position", {}))


def _from_bundle(bundle: Bundle) -> Trained:
    from safetensors.torch import load_file  # late: only bundles need it

    model = _rebuilt(bundle.config["arch"], bundle.embedding_dim, load_file(bundle.weights_path), bundle.weights_path)
    return Trained(model, dict(bundle.config), bundle.weights_path, None, {})


def _rebuilt(arch: str, embedding_dim: int, weights: dict[str, torch.Tensor], source: Path) -> nn.Module:
    """The eval-mode `arch` model holding `weights`; weights of another shape are a UserError naming `source`."""
    model = build_model(arch, embedding_dim=embedding_dim, pretrained=False)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise UserError(f"{source} does not fit a {arch} model ({str(exc).splitlines()[0]})") from None
    return model.eval()


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
