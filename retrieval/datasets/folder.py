"""ROOT/<class>/<image> trees, split zero-shot: disjoint classes for train and test.

If ROOT/train and ROOT/test exist they are the splits; otherwise the first half of the sorted class folders
(rounded up) is train and the rest is test, the protocol CUB and CARS use.
"""

from __future__ import annotations

import math
from pathlib import Path

from retrieval.datasets.base import FileImageDataset
from retrieval.errors import UserError
from retrieval.images import IMAGE_SUFFIXES, is_image_file


def load_folder(root: str | Path, split: str, *, image_size: int = 224, channels: int = 3) -> FileImageDataset:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory (expected ROOT/<class>/<image>)")
    presplit = (root / "train").is_dir() and (root / "test").is_dir()
    classes = _class_dirs(root / split if presplit else root)
    if not presplit:
        if len(classes) < 2:
            raise UserError(f"{root}: a zero-shot split needs at least 2 class folders, found {len(classes)}")
        cut = math.ceil(len(classes) / 2)
        classes = classes[:cut] if split == "train" else classes[cut:]
    paths, labels = [], []
    for label, directory in enumerate(classes):
        images = sorted(p for p in directory.iterdir() if is_image_file(p))
        if not images:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise UserError(f"{directory}: class folder has no images ({suffixes})")
        paths += images
        labels += [label] * len(images)
    return FileImageDataset(
        paths, labels, image_size=image_size, channels=channels,
        class_names={label: directory.name for label, directory in enumerate(classes)},
    )


def _class_dirs(directory: Path) -> list[Path]:
    classes = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{directory}: no class folders (expected {directory}/<class>/<image>)")
    return classes
