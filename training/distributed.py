"""Process context of a training run: the torchrun machinery every command shares (retrieval.distributed)."""

from __future__ import annotations

from retrieval.distributed import Processes, resolve_device, start, stop

__all__ = ["Processes", "resolve_device", "start", "stop"]
