"""What one generation of the service answers with: a verified bundle, its ONNX embedder, the gallery index and,
when probes are on, the torch model rebuilt from the same bundle. Immutable, so a reload swaps a whole Engine."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from retrieval.models.bundle import MANIFEST_FILE, Bundle, sha256_file
from retrieval.gallery.embedder import OnnxEmbedder
from retrieval.errors import UserError
from retrieval.gallery.generations import confined, resolve_current
from retrieval.gallery.index import INFO_FILE, GalleryIndex
from retrieval.jsonfiles import read_json
from serve.schemas import SearchHit


@dataclass(frozen=True)
class Engine:
    bundle: Bundle
    embedder: OnnxEmbedder
    index: GalleryIndex
    index_path: Path
    index_id: str
    torch_model: torch.nn.Module | None
    gallery: torch.Tensor | None
    """Gallery embeddings [NX, D] for the attacks of /probe (None when probes are off)."""

    @property
    def model_id(self) -> str:
        return self.bundle.model_sha256[:16]

    @property
    def count(self) -> int:
        return len(self.index)

    def embed(self, images: torch.Tensor) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        return self.embedder.embed(images), time.perf_counter() - start

    def search(self, embeddings: np.ndarray, top_k: int) -> tuple[list[list[SearchHit]], float]:
        """Rankings as response items (GalleryIndex.search runs FAISS on the calling thread only)."""
        start = time.perf_counter()
        scores, ids = self.index.search(embeddings, min(top_k, self.count))
        took = time.perf_counter() - start
        return [self._hits(s, i) for s, i in zip(scores, ids)], took

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> list[SearchHit]:
        hits = []
        ids = [i for i in ids.tolist() if i >= 0]
        for rank, (score, row) in enumerate(zip(scores.tolist(), self.index.rows(ids)), start=1):
            hits.append(SearchHit(id=row.pop("id"), rank=rank, score=score, label=row.pop("label"),
                                  class_name=row.pop("class_name"), metadata=row))
        return hits

    def with_index(self, index: GalleryIndex, index_path: Path, index_id: str) -> Engine:
        """The same model over another gallery (admin reload)."""
        return dataclasses.replace(self, index=index, index_path=index_path, index_id=index_id,
                                   gallery=_gallery(index) if self.torch_model is not None else None)

    def warm(self) -> None:
        """One query end to end (and one torch forward for probes) so the first real request pays no set-up cost."""
        blank = torch.zeros(1, self.bundle.channels, self.bundle.input_size, self.bundle.input_size)
        embedding, _ = self.embed(blank)
        self.search(embedding, 1)
        if self.torch_model is not None:
            with torch.no_grad():
                self.torch_model(blank)


def load_engine(index_path: Path, bundle_path: Path | None, *, threads: int, with_torch: bool) -> Engine:
    """Verify and load everything; any mismatch (hashes, model binding) raises UserError before serving starts."""
    from retrieval.models.loading import load_trained  # torch model only matters for /probe

    index_path = index_path.resolve()
    bundle = Bundle.load(bundle_path or _recorded_bundle(index_path), verify=True)
    index_id = _index_id(index_path)
    index = GalleryIndex.load(index_path, expected_model_sha256=bundle.model_sha256, verify=True)
    embedder = OnnxEmbedder(bundle, threads=threads)
    torch_model = load_trained(bundle.path).model.requires_grad_(False) if with_torch else None
    gallery = _gallery(index) if with_torch else None
    engine = Engine(bundle, embedder, index, index_path, index_id, torch_model, gallery)
    engine.warm()
    return engine


def load_index(engine: Engine, index_path: Path) -> Engine:
    """A new gallery for the running model, verified against the model it must have been built with, and warmed."""
    index_id = _index_id(index_path)
    index = GalleryIndex.load(index_path, expected_model_sha256=engine.bundle.model_sha256, verify=True)
    new = engine.with_index(index, index_path, index_id)
    new.warm()
    return new


def _index_id(index_path: Path) -> str:
    """Generation name plus a digest of its manifest: differs between any two index contents."""
    generation = resolve_current(index_path)
    try:
        digest = sha256_file(generation / MANIFEST_FILE)[:12]
    except OSError:
        raise UserError(f"index {generation} has no readable {MANIFEST_FILE}") from None
    return f"{generation.name}-{digest}"


def _recorded_bundle(index_path: Path) -> Path:
    """The bundle named in the index's info (relative to the index directory), for `serve INDEX/` alone."""
    info = read_json(resolve_current(index_path) / INFO_FILE, "index")
    if not info.get("bundle"):
        raise UserError(f"index {index_path} does not record its bundle; pass --bundle (or RR_BUNDLE)")
    return confined(index_path.parent, index_path / str(info["bundle"]), "the bundle recorded by the index")


def _gallery(index: GalleryIndex) -> torch.Tensor:
    """Gallery vectors for the attacks (exact for flat and HNSW, 8-bit accurate for IVF-PQ's refine store)."""
    return torch.from_numpy(np.ascontiguousarray(index.index.reconstruct_n(0, len(index)), dtype=np.float32))
