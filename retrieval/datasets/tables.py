"""Whitespace-separated index files (CUB's images.txt, SOP's Ebay_*.txt) with errors that name file and line."""

from __future__ import annotations

from pathlib import Path

from retrieval.errors import UserError


def require_file(path: Path, dataset: str) -> Path:
    if not path.is_file():
        raise UserError(f"{path}: missing; is --data-root the {dataset} folder?")
    return path


def read_rows(path: Path, columns: int, *, header: bool = False) -> list[list[str]]:
    """Rows of exactly `columns` fields, split on whitespace at most columns-1 times (the last may hold spaces)."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        lines = enumerate(fh, start=1)
        if header:
            next(lines, None)
        for number, line in lines:
            if not line.strip():
                continue
            fields = line.strip().split(maxsplit=columns - 1)
            if len(fields) != columns:
                raise UserError(f"{path}:{number}: expected {columns} columns, found {len(fields)}")
            rows.append(fields)
    if not rows:
        raise UserError(f"{path}: no entries")
    return rows


def to_int(value: str, path: Path) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{path}: {value!r} is not an integer id") from None


def check_first_image(paths: list[Path], listed_in: Path, split: str) -> None:
    """Cheap sanity check of the root (stat one file, not tens of thousands); missing files surface on access."""
    if not paths:
        raise UserError(f"{listed_in}: lists no images of the {split} split")
    if not paths[0].is_file():
        raise UserError(f"{paths[0]}: listed in {listed_in} but missing; is --data-root the dataset folder?")
