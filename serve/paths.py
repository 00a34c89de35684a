"""Paths from requests must stay inside a configured root (no '..', absolute or symlink escapes)."""

from __future__ import annotations

from pathlib import Path

from retrieval.errors import UserError
from retrieval.gallery.generations import OutsideRoot, confined
from serve.errors import ServiceError


def inside(root: Path, requested: str) -> Path:
    """`requested` (relative to `root`, or absolute) resolved with symlinks; 403 unless it lies within `root`."""
    if "\x00" in requested:
        raise ServiceError(422, "invalid_path", "path contains a NUL byte")
    try:
        return confined(root, requested, "path")
    except OutsideRoot:
        raise ServiceError(403, "path_not_allowed", f"path must lie inside the index root {root}") from None
    except UserError as exc:
        raise ServiceError(422, "invalid_path", str(exc)) from None
