"""MNIST and Fashion-MNIST from IDX files, offline first.

Lookup order: `root` if given (only there); else the system copy (/usr/share/datasets/...), then an earlier download
in the cache; else torchvision downloads into the cache. The files are parsed by torchvision's IDX reader, which only
takes an uncompressed path, so a `.gz` is decompressed once into the cache (atomically) rather than re-implementing
the parser.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.datasets import mnist as tv_mnist

from retrieval.atomic import atomic_path
from retrieval.datasets.base import TensorImageDataset
from retrieval.errors import UserError


@dataclass(frozen=True)
class IdxSource:
    system_dir: Path
    torchvision_class: type
    install_hint: str


SOURCES = {
    "fashion-mnist": IdxSource(
        Path("/usr/share/datasets/fashion-mnist"),
        tv_mnist.FashionMNIST,
        "install it with `apt-get install dataset-fashion-mnist`, or pass --data-root DIR holding the IDX files",
    ),
    "mnist": IdxSource(
        Path("/usr/share/datasets/mnist"),
        tv_mnist.MNIST,
        "pass --data-root DIR holding the MNIST IDX files (train-images-idx3-ubyte[.gz], ...)",
    ),
}
_PREFIX = {"train": "train", "test": "t10k"}


def cache_dir() -> Path:
    """$ROBUST_RETRIEVAL_CACHE, else $XDG_CACHE_HOME/robust-retrieval, else ~/.cache/robust-retrieval."""
    explicit = os.environ.get("ROBUST_RETRIEVAL_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "robust-retrieval"


def load_idx_dataset(name: str, split: str, root: str | os.PathLike | None = None) -> TensorImageDataset:
    source = SOURCES[name]
    stems = [f"{_PREFIX[split]}-images-idx3-ubyte", f"{_PREFIX[split]}-labels-idx1-ubyte"]
    if root is not None:
        dirs = _layouts(Path(root), source)
    else:
        dirs = [source.system_dir, *_layouts(cache_dir() / "torchvision", source)]
    found = _find(dirs, stems)
    if found is None and root is None:
        _download(source)
        found = _find(dirs, stems)
    if found is None:
        where = root if root is not None else f"{source.system_dir} and the download failed"
        raise UserError(f"{name} {split} split not found in {where}; {source.install_hint}")
    images_path, labels_path = found
    images = _read(images_path, tv_mnist.read_image_file)
    labels = _read(labels_path, tv_mnist.read_label_file)
    names = dict(enumerate(source.torchvision_class.classes))  # Fashion-MNIST: "T-shirt/top", ..., "Ankle boot"
    return TensorImageDataset(images, labels, source_prefix=f"{name}:{split}", class_names=names)


def _layouts(directory: Path, source: IdxSource) -> list[Path]:
    """Flat IDX directory, or torchvision's ROOT/<Class>/raw layout."""
    return [directory, directory / source.torchvision_class.__name__ / "raw"]


def _find(dirs: list[Path], stems: list[str]) -> list[Path] | None:
    for directory in dirs:
        paths = [_existing(directory / stem) for stem in stems]
        if all(p is not None for p in paths):
            return paths  # type: ignore[return-value]
    return None


def _existing(path: Path) -> Path | None:
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _read(path: Path, reader) -> torch.Tensor:
    try:
        return reader(str(_uncompressed(path)))
    except (AssertionError, TypeError, ValueError, RuntimeError, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a valid IDX file ({' '.join(str(exc).split()) or type(exc).__name__})") from None


def _uncompressed(path: Path) -> Path:
    """The path itself, or a cached decompressed copy keyed by the .gz file's location, size and mtime."""
    if path.suffix != ".gz":
        return path
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "idx" / f"{key}-{path.stem}"
    if not target.is_file():
        with atomic_path(target) as tmp, gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def _download(source: IdxSource) -> None:
    """Best effort: a failure (offline machine) just leaves the files missing and the caller reports how to fix it.

    torchvision fetches all four files in one go; its progress output goes to stderr so stdout stays clean.
    """
    try:
        with contextlib.redirect_stdout(sys.stderr):
            source.torchvision_class(str(cache_dir() / "torchvision"), download=True)
    except Exception:  # urllib, HTTP and checksum failures all mean "not available"
        return
