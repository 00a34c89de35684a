"""A tiny but real bundle and index for the service tests and benchmarks: C2F2 trained for a few dozen triplet
steps on Fashion-MNIST, exported through training.export, gallery indexed through retrieval.gallery.index."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch

from retrieval.atomic import atomic_path
from retrieval.datasets import load_dataset
from retrieval.gallery.index import METADATA_FILE, GalleryIndex, metadata_table
from retrieval.gallery.embedder import OnnxEmbedder
from retrieval.images import sha256_bytes
from retrieval.gallery.thumbnails import encode_pixels
from training.export import export_bundle
from training.losses.triplet import triplet_loss
from retrieval.models import build_model

GALLERY = 1000
QUERIES = 200


@dataclass(frozen=True)
class Artifacts:
    bundle: Path
    index: Path
    """Index directory (inside `root`, the index root of the admin reload)."""
    root: Path
    queries: torch.Tensor
    """Test images that are not in the gallery, [QUERIES, 1, 28, 28] in [0, 1]."""
    query_labels: torch.Tensor


def build_artifacts(root: Path, *, steps: int = 40, embedding_dim: int = 64, seed: int = 0) -> Artifacts:
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: more threads only contend on a shared machine
    try:
        return _build(root, steps, embedding_dim)
    finally:
        torch.set_num_threads(threads)


def _build(root: Path, steps: int, embedding_dim: int) -> Artifacts:
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    model = _train(train.tensors(), train.labels, steps, embedding_dim)
    run = root / "run"
    with atomic_path(run / "checkpoint.pt") as tmp:
        torch.save({"model": model.state_dict(),
                    "config": {"arch": "c2f2", "embedding_dim": embedding_dim, "method": "N/A[R]"}}, tmp)
    bundle = export_bundle(run, root / "bundle")
    images, labels = test.tensors(), test.labels
    index_dir = root / "indexes" / "fashion"
    write_index(bundle.path, images[:GALLERY], labels[:GALLERY], index_dir, [test.source(i) for i in range(GALLERY)],
                test.classes)
    return Artifacts(bundle=bundle.path, index=index_dir, root=root / "indexes",
                     queries=images[GALLERY:GALLERY + QUERIES], query_labels=labels[GALLERY:GALLERY + QUERIES])


def write_index(
    bundle_dir: Path, images: torch.Tensor, labels: torch.Tensor, out: Path, sources: list[str],
    classes: list[str | None] | None = None,
) -> None:
    """A flat index of `images`; `classes` names each label (None: an index without class names)."""
    from retrieval.models.bundle import Bundle

    bundle = Bundle.load(bundle_dir)
    vectors = OnnxEmbedder(bundle).embed(images)
    names = None if classes is None else [classes[label] for label in labels.tolist()]
    table = metadata_table(sources, [sha256_bytes(s.encode()) for s in sources], labels.tolist(), names)
    previews = [encode_pixels(p) for p in images.mul(255).round().to(torch.uint8).numpy()]  # as `index` does
    GalleryIndex.build(vectors, table, "flat", model_sha256=bundle.model_sha256, thumbnails=previews).save(out)


def as_built_before_class_names(index: Path) -> None:
    """Rewrite the current generation's metadata in the layout indexes had before the class_name column."""
    from retrieval.models.bundle import sha256_file
    from retrieval.gallery.generations import resolve_current

    generation = resolve_current(index)
    metadata, manifest_path = generation / METADATA_FILE, generation / "manifest.json"
    pq.write_table(pq.read_table(metadata).drop_columns(["class_name"]), metadata)
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][METADATA_FILE] = sha256_file(metadata)
    manifest_path.write_text(json.dumps(manifest))


def _train(images: torch.Tensor, labels: torch.Tensor, steps: int, embedding_dim: int) -> torch.nn.Module:
    """Random SPC-2 triplets: anchor and positive share a class, the negative is the next pair's anchor."""
    model = build_model("c2f2", embedding_dim=embedding_dim, pretrained=False).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    by_class = [torch.nonzero(labels == c).flatten() for c in range(10)]
    for _ in range(steps):
        classes = torch.randint(10, (32,))
        anchors = torch.stack([by_class[c][torch.randint(len(by_class[c]), (1,))][0] for c in classes.tolist()])
        positives = torch.stack([by_class[c][torch.randint(len(by_class[c]), (1,))][0] for c in classes.tolist()])
        negatives = anchors.roll(1)
        keep = classes != classes.roll(1)
        ea, ep, en = (model(images[i]) for i in (anchors[keep], positives[keep], negatives[keep]))
        optimiser.zero_grad()
        triplet_loss(ea, ep, en).backward()
        optimiser.step()
    return model.eval()
