"""Datasets by name: `load_dataset("fashion-mnist", "test")` -> ImageDataset with images in [0, 1]."""

from __future__ import annotations

from pathlib import Path

from retrieval.datasets.base import FileImageDataset, ImageDataset, TensorImageDataset
from retrieval.datasets.cars import load_cars
from retrieval.datasets.cub import load_cub
from retrieval.datasets.folder import load_folder
from retrieval.datasets.idx import SOURCES as IDX_SOURCES
from retrieval.datasets.idx import load_idx_dataset
from retrieval.datasets.sop import load_sop
from retrieval.errors import UserError

_FILE_LOADERS = {"folder": load_folder, "cub": load_cub, "cars": load_cars, "sop": load_sop}
DATASETS = (*IDX_SOURCES, *_FILE_LOADERS)
SPLITS = ("train", "test")

__all__ = [
    "DATASETS",
    "SPLITS",
    "FileImageDataset",
    "ImageDataset",
    "TensorImageDataset",
    "load_dataset",
    "parse_dataset_spec",
]


def load_dataset(
    name: str,
    split: str,
    *,
    root: str | Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Load one split; `image_size`/`channels` re-shape file-backed images (e.g. for a 28x28 1-channel model)."""
    _check(name, split)
    if name in IDX_SOURCES:
        if (image_size or 28) != 28 or (channels or 1) != 1:
            raise UserError(f"{name} images are 28x28 with 1 channel; image_size/channels cannot change that")
        return load_idx_dataset(name, split, root)
    if root is None:
        raise UserError(f"dataset {name!r} needs --data-root pointing at its folder")
    return _FILE_LOADERS[name](root, split, image_size=image_size or 224, channels=channels or 3)


def parse_dataset_spec(spec: str) -> tuple[str, str]:
    """'fashion-mnist:test' -> ('fashion-mnist', 'test')."""
    name, sep, split = spec.rpartition(":")
    if not sep:
        raise UserError(f"dataset {spec!r} must be NAME:SPLIT, e.g. fashion-mnist:test")
    _check(name, split)
    return name, split


def _check(name: str, split: str) -> None:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose train or test")
