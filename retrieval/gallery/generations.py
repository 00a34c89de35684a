"""Immutable generation directories behind an atomically replaced CURRENT pointer.

A writer fills a hidden staging directory, renames it to `gen-NNNNNN` and only then rewrites CURRENT (one atomic
rename). A crash at any point leaves CURRENT naming the previous, complete generation; readers always resolve
CURRENT, so they never see a half-written one. Old generations are pruned after the switch.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from retrieval.atomic import atomic_write_text
from retrieval.errors import UserError

POINTER = "CURRENT"
KEEP = 2
"""Generations kept after a switch: the new one, and the previous one for readers that resolved CURRENT just before."""
STALE_SECONDS = 3600
"""A staging directory this old belongs to a crashed writer, not to one still running."""
_NAME = re.compile(r"^gen-(\d{6,})$")


class OutsideRoot(UserError):
    """A path that resolves outside the directory it must stay in."""


def confined(root: str | os.PathLike, relative: str | os.PathLike, what: str) -> Path:
    """`root / relative` with every symlink resolved, which must still lie inside `root` (resolved too): a
    component-wise test, so a sibling `ROOT-evil` is outside `ROOT`. UserError otherwise."""
    try:
        base = Path(root).resolve()
        path = (base / relative).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # symlink loops, names too long, NUL bytes
        raise UserError(f"{what} {relative!s:.200} cannot be resolved ({exc.__class__.__name__})") from None
    if not path.is_relative_to(base):
        raise OutsideRoot(f"{what} {relative!s:.200} resolves outside {base}")
    return path


def resolve_current(root: str | os.PathLike) -> Path:
    """The generation directory CURRENT names, resolved inside `root`; UserError when there is none, it points
    nowhere or outside, or the pointer itself is unreadable."""
    root = Path(root)
    pointer = root / POINTER
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise UserError(f"{root} holds no index ({POINTER} file missing)") from None
    except (OSError, UnicodeDecodeError) as exc:  # a directory, not UTF-8, root not a directory, name too long
        raise UserError(f"{pointer} is not a readable pointer file ({exc.__class__.__name__})") from None
    if not _NAME.match(name):
        raise UserError(f"{pointer} holds {name[:80]!r}, which is not a generation name (gen-NNNNNN)")
    generation = confined(root, name, "generation directory")
    if not generation.is_dir():
        raise UserError(f"{pointer} points to {name!r}, which is not a generation directory in {root}")
    return generation


def publish(root: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Run `write(staging_dir)`, then make its result the current generation and prune old ones."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        write(staging)
        target = root / f"gen-{_next_number(root):06d}"
        os.rename(staging, target)  # made durable by the directory fsync of the CURRENT write below
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    atomic_write_text(root / POINTER, target.name + "\n")
    _prune(root, keep=target)
    return target


def _next_number(root: Path) -> int:
    numbers = [int(m.group(1)) for p in root.iterdir() if (m := _NAME.match(p.name))]
    return max(numbers, default=0) + 1


def _prune(root: Path, keep: Path) -> None:
    """Delete all but the newest KEEP generations (never `keep`) and old staging left by a crashed writer."""
    generations = sorted((p for p in root.iterdir() if _NAME.match(p.name)), key=lambda p: int(p.name[4:]))
    for old in generations[:-KEEP]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".staging-*"):
        if time.time() - stale.stat().st_mtime > STALE_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
