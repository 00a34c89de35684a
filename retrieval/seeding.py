"""Named, independent seeds derived from one base seed, so each random stream can be recreated without storing it:
training's (model init, data order, miners, one per process) and evaluation's (targets and restarts per attack and
batch, the uniform-noise baseline). A hash of the text, not Python's hash(), so a seed is the same in every process."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed determined by the base seed and a purpose, e.g. derive_seed(0, "data", epoch)."""
    text = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def generator(seed: int, *parts: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh torch.Generator on `device` seeded with derive_seed(seed, *parts)."""
    import torch  # late: derive_seed alone needs no torch (a fresh process gets a seed in milliseconds)

    return torch.Generator(device=device).manual_seed(derive_seed(seed, *parts))
