"""Tiny on-disk datasets and configurations for the trainer tests (runs of a few iterations in about a second)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image

from training.config import TrainConfig
from training.defenses.config import DefenseConfig

CLASSES = 4


def class_images(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images [n, size, size] whose class (n % CLASSES) is a bright horizontal band, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % CLASSES
    images = rng.integers(0, 190, size=(n, size, size), dtype=np.uint8)
    band = size // CLASSES
    for i, y in enumerate(labels):
        images[i, y * band : (y + 1) * band] += 50
    return images, labels.astype(np.uint8)


def write_idx(root: Path, n_train: int = 96, n_test: int = 48) -> Path:
    """An MNIST-format dataset (uncompressed IDX files) for `--dataset mnist --data-root root`."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = class_images(n, 28, seed)
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
    return root


def write_folder(root: Path, per_class: int = 6, size: int = 28) -> Path:
    """ROOT/{train,test}/<class>/<i>.png grayscale images."""
    for split, seed in (("train", 0), ("test", 1)):
        images, labels = class_images(per_class * CLASSES, size, seed)
        for i, (image, label) in enumerate(zip(images, labels)):
            directory = root / split / f"class{label}"
            directory.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(directory / f"{i}.png")
    return root


def tiny_config(out: Path, data_root: Path, **overrides) -> TrainConfig:
    """c2f2 on the tiny IDX set: 8 pairs per batch, 12 batches per epoch, validation on 48 images."""
    defense = overrides.pop("defense", DefenseConfig())
    values = dict(
        out=str(out),
        dataset="mnist",
        data_root=str(data_root),
        epochs=2,
        batch_pairs=8,
        log_every=2,
        val_batch=64,
        num_workers=0,
        device="cpu",
    )
    return TrainConfig(**{**values, **overrides}, defense=defense).validate()
