"""Turn a dataset split or a folder of images into gallery vectors + metadata, skipping (or refusing) bad images.

Image files are read once: the same bytes are hashed (metadata `sha256`) and decoded by retrieval.images, so the
hash always describes exactly what was embedded. In-memory datasets (the MNISTs) hash their uint8 pixel bytes.
With `thumbnails=True` each kept item also gets its preview (retrieval.gallery.thumbnails) from those same decoded pixels.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from retrieval.atomic import atomic_path, atomic_write_json
from retrieval.datasets import ImageDataset
from retrieval.gallery.embedder import OnnxEmbedder
from retrieval.errors import UserError
from retrieval.images import ImageError, eval_transform, is_image_file, open_image, sha256_bytes
from retrieval.gallery.index import metadata_table
from retrieval.jsonfiles import read_json
from retrieval.gallery.thumbnails import Thumbnails, encode, encode_pixels

Progress = Callable[[int], None]


@dataclass
class Skipped:
    source: str
    reason: str


@dataclass
class GalleryItems:
    """Embedded items ready for GalleryIndex.build/append, plus what was left out and why."""

    vectors: np.ndarray
    metadata: pa.Table
    skipped: list[Skipped] = field(default_factory=list)
    already_indexed: int = 0
    thumbnails: list[bytes] | None = None
    """One encoded preview per kept item when asked for, else None."""

    def write(self, directory: Path) -> None:
        """One process's share of an `index` run, as files for rank 0 to join (retrieval.gallery.command)."""
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / "vectors.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, self.vectors, allow_pickle=False)
        with atomic_path(directory / "metadata.parquet") as tmp:
            pq.write_table(self.metadata, tmp)
        if self.thumbnails is not None:
            Thumbnails.from_items(self.thumbnails).write(directory)
        atomic_write_json(directory / "items.json", {"skipped": [[s.source, s.reason] for s in self.skipped],
                                                     "already_indexed": self.already_indexed,
                                                     "thumbnails": self.thumbnails is not None})

    @classmethod
    def read(cls, directory: Path) -> GalleryItems:
        facts = read_json(directory / "items.json", "index shard")  # written last: the shard is complete
        previews = Thumbnails.load(directory) if facts["thumbnails"] else None
        return cls(np.load(directory / "vectors.npy", allow_pickle=False), pq.read_table(directory / "metadata.parquet"),
                   [Skipped(*pair) for pair in facts["skipped"]], facts["already_indexed"],
                   None if previews is None else [previews.get(i) for i in range(len(previews))])

    @classmethod
    def joined(cls, parts: Sequence[GalleryItems]) -> GalleryItems:
        """The parts one after another, as one process would have produced them."""
        previews = [p.thumbnails for p in parts]
        return cls(np.concatenate([p.vectors for p in parts]), pa.concat_tables([p.metadata for p in parts]),
                   [s for p in parts for s in p.skipped], sum(p.already_indexed for p in parts),
                   None if previews[0] is None else [t for part in previews for t in part])


def image_files(directory: str | Path) -> list[Path]:
    """Every image file below `directory` (recursive, by suffix, hidden files excluded), in a stable order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"--images {directory} is not a directory")
    return sorted(p for p in directory.rglob("*") if is_image_file(p))


def embed_dataset(
    dataset: ImageDataset,
    embedder: OnnxEmbedder,
    *,
    strict: bool = False,
    known_sha256: frozenset[str] = frozenset(),
    progress: Progress | None = None,
    thumbnails: bool = False,
    part: range | None = None,
) -> GalleryItems:
    """Embed a whole split, or the items in `part` (a process's share under torchrun); labels and their names come
    from the dataset, sources from dataset.source(i)."""
    part = range(len(dataset)) if part is None else part
    images = dataset.tensors()
    labels = dict(zip(part, dataset.labels[part.start : part.stop].tolist()))
    names = {i: dataset.class_name(label) for i, label in labels.items()}
    if images is None:  # file-backed: go through the same checked path as --images
        sources = [dataset.source(i) for i in part]
        return embed_files(sources, embedder, labels=list(labels.values()), class_names=list(names.values()),
                           strict=strict, known_sha256=known_sha256, progress=progress, thumbnails=thumbnails)
    pixels = images[part.start : part.stop].mul(255).round_().to(torch.uint8)
    hashes = {i: sha256_bytes(p.numpy().tobytes()) for i, p in zip(part, pixels)}
    keep = [i for i in part if hashes[i] not in known_sha256]
    if progress and len(keep) < len(part):
        progress(len(part) - len(keep))
    step = embedder.batch_size
    vectors = _embed_batches(embedder, (images[keep[s : s + step]] for s in range(0, len(keep), step)), progress)
    metadata = metadata_table([dataset.source(i) for i in keep], [hashes[i] for i in keep], [labels[i] for i in keep],
                              [names[i] for i in keep])
    previews = [encode_pixels(pixels[i - part.start].numpy()) for i in keep] if thumbnails else None
    return GalleryItems(vectors, metadata, already_indexed=len(part) - len(keep), thumbnails=previews)


def embed_files(
    paths: Sequence[str | Path],
    embedder: OnnxEmbedder,
    *,
    labels: Sequence[int] | None = None,
    class_names: Sequence[str | None] | None = None,
    strict: bool = False,
    known_sha256: frozenset[str] = frozenset(),
    progress: Progress | None = None,
    workers: int = 4,
    thumbnails: bool = False,
) -> GalleryItems:
    """Read, hash and decode files in parallel batches; unreadable ones are skipped with a reason (fatal if strict).
    `labels` and `class_names`, where given, have one entry per path."""
    channels, size = embedder.input_shape[0], embedder.input_shape[1]
    skipped: list[Skipped] = []
    already_indexed = 0
    kept_sources, kept_hashes, kept_labels, kept_names, kept_previews = [], [], [], [], []
    chunks = [np.empty((0, embedder.dim), np.float32)]

    def load(path: str | Path) -> tuple[str, torch.Tensor | None, bytes, str]:
        """(sha256, model input or None when already indexed or unreadable, preview, reason it was skipped)."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            return "", None, b"", f"cannot read file ({exc.strerror or type(exc).__name__})"
        digest = sha256_bytes(data)
        if digest in known_sha256:
            return digest, None, b"", ""
        try:
            image = open_image(data, channels=channels)
        except ImageError as exc:
            return digest, None, b"", str(exc).removeprefix("image: ")
        return digest, eval_transform(size)(image), encode(image) if thumbnails else b"", ""

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), embedder.batch_size):
            batch, tensors = paths[start : start + embedder.batch_size], []
            for offset, (path, (digest, tensor, preview, reason)) in enumerate(zip(batch, pool.map(load, batch))):
                if reason and strict:
                    raise UserError(f"{path}: {reason} (drop --strict to skip unreadable images)")
                if reason:
                    skipped.append(Skipped(str(path), reason))
                elif tensor is None:
                    already_indexed += 1
                else:
                    tensors.append(tensor)
                    kept_sources.append(str(path))
                    kept_hashes.append(digest)
                    kept_labels.append(None if labels is None else labels[start + offset])
                    kept_names.append(None if class_names is None else class_names[start + offset])
                    kept_previews.append(preview)
            if tensors:
                chunks.append(embedder.embed(torch.stack(tensors)))
            if progress:
                progress(len(batch))
    metadata = metadata_table(kept_sources, kept_hashes, kept_labels, kept_names)
    return GalleryItems(np.concatenate(chunks), metadata, skipped, already_indexed,
                        kept_previews if thumbnails else None)


def _embed_batches(embedder: OnnxEmbedder, batches: Iterator[torch.Tensor], progress: Progress | None) -> np.ndarray:
    chunks = [np.empty((0, embedder.dim), np.float32)]
    for batch in batches:
        chunks.append(embedder.embed(batch))
        if progress:
            progress(len(batch))
    return np.concatenate(chunks)
