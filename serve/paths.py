"""Paths from requests must stay inside a configured root (no '..', absolute or symlink escapes)."""

from __future__ import annotations

from pathlib import Path

from serve.errors import ServiceError


def inside(root: Path, requested: str) -> Path:
    """`requested` (relative to `root`, or absolute) resolved with symlinks; 403 unless it lies within `root`."""
    if "\x00" in requested:
        raise ServiceError(422, "invalid_path", "path contains a NUL byte")
    root = root.resolve()
    candidate = (root / requested).resolve()
    if not candidate.is_relative_to(root):
        raise ServiceError(403, "path_not_allowed", f"path must lie inside the index root {root}")
    return candidate
