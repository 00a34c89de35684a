"""The FAISS gallery: build, search, append, and crash-safe save/load bound to the model that made the vectors.

Vectors are L2-normalised and searched by inner product (cosine), which ranks exactly like the Euclidean metric `N`
of the models: d = sqrt(2 - 2 * score).

Choosing an index type (`choose_index_type`, used by `--index-type auto`):

* flat    while one exact scan reads at most FLAT_MAX_BYTES (32 MiB: about 2 ms per query on one core; 16k items of
          512-d). Exact, trivially appendable.
* hnsw    above that, up to HNSW_MAX_ITEMS and if the graph (vectors + 2*M links per item) fits in the memory budget
          (default: half the available RAM). Fast, high recall, appendable; but it builds at only 1.5k-4k 512-d
          vectors/s per core (busy vs idle 2-core box), so 1M items take several minutes.
* ivf-pq  otherwise (needs >= IVF_PQ_MIN items to train): IVF with a product quantizer (1 byte per 8 dims) whose
          candidates are re-ranked from a float16 copy of the vectors: about half the memory of hnsw, cheap to
          build. Appendable while the gallery stays within IVF_PQ_GROWTH x its size when built (nlist and the
          codebooks were chosen for that size and distribution).

After building, search parameters (HNSW efSearch, IVF nprobe) are raised from cheap to thorough until recall@10
against exact search on a gallery sample reaches 0.97 (a margin over the 0.95 target, since held-out queries
measured a little lower than gallery items in benchmarks/index_bench.py); the measured recall and per-query
latency go into index_info.json.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.gallery import quality
from retrieval.atomic import atomic_path, atomic_write_json
from retrieval.models.bundle import verify_manifest, write_manifest
from retrieval.errors import UserError
from retrieval.gallery.generations import publish, resolve_current
from retrieval.jsonfiles import read_json
from retrieval.threads import serial_faiss
from retrieval.gallery.thumbnails import FILES as THUMBNAIL_FILES, MAX_SIDE as THUMBNAIL_MAX_SIDE, Thumbnails

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf-pq")
FLAT_MAX_BYTES = 32 << 20
IVF_PQ_MIN = 10_000
IVF_PQ_GROWTH = 4.0
HNSW_MAX_ITEMS = 250_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
REFINE_FACTOR = 32
"""ivf-pq re-ranks REFINE_FACTOR * k PQ candidates exactly (cheap next to scanning the probed lists)."""

SERIAL_QUERIES = 16
"""Query batches up to this size search on the calling thread only (see threads.serial_faiss)."""

INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.parquet"
INFO_FILE = "index_info.json"
METADATA_SCHEMA = pa.schema(
    [("id", pa.int64()), ("label", pa.int64()), ("source", pa.string()), ("sha256", pa.string()),
     ("class_name", pa.string())]
)
OPTIONAL_COLUMNS = ("class_name",)
"""Columns an index built before they existed lacks; loading fills them with nulls."""


def available_memory() -> int:
    """Bytes of RAM free right now (Linux/most Unix); the auto rule budgets half of it."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def memory_estimate(index_type: str, n: int, dim: int) -> int:
    """Approximate resident bytes of each index type (the numbers the auto rule compares)."""
    ids = 8 * n
    if index_type == "flat":
        return 4 * n * dim
    if index_type == "hnsw":
        return 4 * n * dim + int(1.1 * 2 * HNSW_M * 4 * n) + ids
    return n * (_pq_subquantizers(dim) + 2 * dim) + ids + 4 * dim * _nlist(n)


def choose_index_type(n: int, dim: int, memory: int | None = None) -> str:
    """The `auto` rule of the module docstring; `memory` is the byte budget (default half the free RAM)."""
    if 4 * n * dim <= FLAT_MAX_BYTES or n < IVF_PQ_MIN:
        return "flat"
    budget = available_memory() // 2 if memory is None else memory
    return "hnsw" if n <= HNSW_MAX_ITEMS and memory_estimate("hnsw", n, dim) <= budget else "ivf-pq"


def metadata_table(
    source: Sequence[str],
    sha256: Sequence[str],
    label: Sequence[int | None] | None = None,
    class_name: Sequence[str | None] | None = None,
) -> pa.Table:
    """Per-item metadata in the index's column layout (ids are assigned when the items are added)."""
    label = [None] * len(source) if label is None else list(label)
    class_name = [None] * len(source) if class_name is None else list(class_name)
    if not len(source) == len(sha256) == len(label) == len(class_name):
        raise ValueError("source, sha256, label and class_name must have one entry per item")
    return pa.table(
        {"id": pa.array([0] * len(source), pa.int64()), "label": pa.array(label, pa.int64()),
         "source": pa.array(list(source), pa.string()), "sha256": pa.array(list(sha256), pa.string()),
         "class_name": pa.array(class_name, pa.string())},
        schema=METADATA_SCHEMA,
    )


class GalleryIndex:
    """A FAISS index, one metadata row per vector (row i <-> FAISS id i), the facts in index_info.json and, unless
    built without, one preview image per item (retrieval.gallery.thumbnails)."""

    def __init__(
        self, index: faiss.Index, metadata: pa.Table, info: dict[str, Any], thumbnails: Thumbnails | None = None
    ) -> None:
        self.index = index
        self.metadata = metadata
        self.info = info
        self.thumbnails = thumbnails

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def index_type(self) -> str:
        return str(self.info["type"])

    @property
    def model_sha256(self) -> str | None:
        return self.info.get("model_sha256")

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        metadata: pa.Table,
        index_type: str = "auto",
        *,
        model_sha256: str | None = None,
        memory: int | None = None,
        thumbnails: Sequence[bytes] | None = None,
    ) -> GalleryIndex:
        """Train (if needed), add, tune search parameters to the recall target and measure recall and latency.

        `thumbnails` (one encoded preview per row) are stored with the index; None builds it without previews."""
        vectors = _prepare(vectors)
        n, dim = vectors.shape
        if n == 0:
            raise UserError("cannot build an index from an empty gallery")
        _check_rows(metadata, n, thumbnails)
        if index_type not in INDEX_TYPES:
            raise UserError(f"unknown index type {index_type!r}; choose one of: {', '.join(INDEX_TYPES)}")
        chosen = choose_index_type(n, dim, memory) if index_type == "auto" else index_type
        if chosen == "ivf-pq" and n < IVF_PQ_MIN:
            raise UserError(f"ivf-pq needs at least {IVF_PQ_MIN} vectors to train its codebooks, got {n}; use flat")
        start = time.perf_counter()
        index, params = _new_index(chosen, n, dim)
        if not index.is_trained:
            index.train(vectors[quality.sample_ids(n, params["trained_on"], seed=1)])
        index.add(vectors)
        info = {
            "type": chosen,
            "requested_type": index_type,
            "dim": dim,
            "metric": "inner_product",
            "model_sha256": model_sha256,
            "built_count": n,
            "build_seconds": round(time.perf_counter() - start, 3),
            **params,
        }
        previews = None if thumbnails is None else Thumbnails.from_items(thumbnails)
        gallery = cls(index, metadata.set_column(0, "id", pa.array(np.arange(n), pa.int64())), info, previews)
        gallery._measure(vectors)
        return gallery

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine for each query row: (scores float32 [Q,k], ids int64 [Q,k]); id -1 pads short galleries."""
        if k < 1:
            raise UserError(f"k must be at least 1, got {k}")
        vectors = _prepare(vectors, self.dim)
        if len(vectors) > SERIAL_QUERIES:
            return self.index.search(vectors, k)
        with serial_faiss():
            return self.index.search(vectors, k)

    def rows(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Metadata of the given FAISS ids (-1 paddings skipped), in order."""
        return self.metadata.take(pa.array([i for i in ids if i >= 0], pa.int64())).to_pylist()

    def append(
        self,
        vectors: np.ndarray,
        metadata: pa.Table,
        *,
        model_sha256: str | None = None,
        thumbnails: Sequence[bytes] | None = None,
    ) -> None:
        """Add items without retraining; refuses (UserError with the reason) where that would degrade the index.

        New items bring `thumbnails` exactly when the index has them, so every item of an index has a preview or
        none does."""
        vectors = _prepare(vectors, self.dim)
        _check_rows(metadata, len(vectors), thumbnails)
        if (thumbnails is None) != (self.thumbnails is None):
            raise ValueError("appended items must have thumbnails exactly when the index has them")
        if model_sha256 is not None and self.model_sha256 not in (None, model_sha256):
            raise UserError("cannot append: the index was built with another model; rebuild it without --append")
        if self.index_type == "ivf-pq":
            limit = int(IVF_PQ_GROWTH * self.info["built_count"])
            if len(self) + len(vectors) > limit:
                raise UserError(
                    f"cannot append to ivf-pq: {len(self) + len(vectors)} items would exceed {limit} "
                    f"({IVF_PQ_GROWTH:g}x the {self.info['built_count']} its lists were sized and trained for); "
                    "rebuild instead"
                )
        first = len(self)
        self.index.add(vectors)
        ids = pa.array(np.arange(first, first + len(vectors)), pa.int64())
        self.metadata = pa.concat_tables([self.metadata, metadata.set_column(0, "id", ids)])
        if self.thumbnails is not None:
            self.thumbnails = self.thumbnails.extended(thumbnails)
        self.info["appended"] = int(self.info.get("appended", 0)) + len(vectors)
        self._measure(self._reconstruct())

    def save(self, directory: str | os.PathLike) -> Path:
        """Publish a new immutable generation under `directory` and point CURRENT at it; returns the generation."""
        previews = self.thumbnails
        self.info["thumbnails"] = (
            None if previews is None else {"max_side": THUMBNAIL_MAX_SIDE, "bytes": previews.nbytes}
        )

        def write(staging: Path) -> None:
            with atomic_path(staging / INDEX_FILE) as tmp:
                faiss.write_index(self.index, str(tmp))
            with atomic_path(staging / METADATA_FILE) as tmp:
                pq.write_table(self.metadata, tmp)
            if previews is not None:
                previews.write(staging)
            atomic_write_json(staging / INFO_FILE, {"count": len(self), **self.info})
            files = (INDEX_FILE, METADATA_FILE, INFO_FILE) + (THUMBNAIL_FILES if previews is not None else ())
            write_manifest(staging, files, model_sha256=self.model_sha256)

        return publish(directory, write)

    @classmethod
    def load(
        cls, directory: str | os.PathLike, expected_model_sha256: str | None = None, verify: bool = True
    ) -> GalleryIndex:
        """Open the current generation; UserError if a file was tampered with or truncated, or the model differs."""
        generation = resolve_current(directory)
        if verify:
            manifest = verify_manifest(generation, "index", (INDEX_FILE, METADATA_FILE, INFO_FILE), THUMBNAIL_FILES)
        else:
            manifest = read_json(generation / "manifest.json", "index")
        if expected_model_sha256 is not None and manifest.get("model_sha256") != expected_model_sha256:
            raise UserError(
                f"index {directory} was built with model {str(manifest.get('model_sha256'))[:12]}, "
                f"not with this bundle's model {expected_model_sha256[:12]}; rebuild it with `robust-retrieval index`"
            )
        info = read_json(generation / INFO_FILE, "index")
        try:
            index = faiss.read_index(str(generation / INDEX_FILE))
            metadata = _read_metadata(generation / METADATA_FILE)
        except (RuntimeError, OSError, ValueError, pa.ArrowException) as exc:  # only the schema's columns reach clients
            raise UserError(f"index {generation} is unreadable: {exc}") from None
        if index.ntotal != metadata.num_rows or index.ntotal != info.get("count"):
            raise UserError(f"index {generation} is inconsistent: vectors, metadata rows and info count differ")
        thumbnails = None
        if set(THUMBNAIL_FILES) <= set(manifest.get("files", {})):  # only files the manifest vouches for
            thumbnails = Thumbnails.load(generation)
            if len(thumbnails) != index.ntotal:
                raise UserError(f"index {generation} is inconsistent: {len(thumbnails)} thumbnails for "
                                f"{index.ntotal} items")
        try:
            quality.apply_params(index, info.get("search_params", {}))
        except (RuntimeError, AttributeError, TypeError, ValueError) as exc:
            raise UserError(f"index {generation} has invalid search_params: {exc}") from None
        info.pop("count")
        return cls(index, metadata, info, thumbnails)

    def _measure(self, vectors: np.ndarray) -> None:
        """Tune search parameters on a leave-one-out sample, then record recall@10 and per-query latency."""
        n = len(vectors)
        query_ids = quality.sample_ids(n)
        queries = vectors[query_ids]
        if self.index_type == "flat" or n <= quality.RECALL_K:
            params, recall = {}, 1.0
        else:
            truth = quality.exact_neighbours(vectors, query_ids)
            candidates = _search_candidates(self.index_type, self.info)
            params, recall = quality.tune(self.index, candidates, queries, query_ids, truth)
        self.info.update(
            search_params=params,
            recall_at_10=round(recall, 4),
            recall_sample=len(query_ids),
            latency=quality.latency_ms(self.index, queries[: quality.LATENCY_QUERIES]),
            latency_threads=1,
        )

    def _reconstruct(self) -> np.ndarray:
        """All stored vectors (exact for flat/hnsw, float16-accurate for ivf-pq's re-ranking store) to re-measure."""
        return self.index.reconstruct_n(0, len(self))


def _new_index(index_type: str, n: int, dim: int) -> tuple[faiss.Index, dict[str, Any]]:
    if index_type == "flat":
        return faiss.IndexFlatIP(dim), {}
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return index, {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    nlist, m = _nlist(n), _pq_subquantizers(dim)
    factory = f"IVF{nlist},PQ{m}x8,Refine(SQfp16)"
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    # The factory turns on polysemous training (PQ code reordering for Hamming pre-filtering, which this search
    # never uses); it was 97% of a 100 s train, so it is switched off.
    faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
    return index, {"factory": factory, "nlist": nlist, "trained_on": min(n, max(64 * nlist, IVF_PQ_MIN))}


def _search_candidates(index_type: str, info: Mapping[str, Any]) -> list[dict[str, float]]:
    """Search settings from cheapest to most thorough, tried in order until the recall target is met."""
    if index_type == "hnsw":
        return [{"efSearch": ef} for ef in (16, 32, 64, 128, 256, 512)]
    probes = [2**i for i in range(int(math.log2(info["nlist"])) + 1)]
    return [{"nprobe": p, "k_factor_rf": REFINE_FACTOR} for p in probes if p >= 4 or p == info["nlist"]]


def _nlist(n: int) -> int:
    """IVF lists: the power of two nearest sqrt(n), at least 16 (about 1000 at 1M items)."""
    return max(16, 2 ** round(math.log2(math.sqrt(max(n, 1)))))


def _pq_subquantizers(dim: int) -> int:
    """One byte per 8 dimensions (64 for 512-d), using the largest divisor of dim not above dim/8."""
    return max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)


def _prepare(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    """float32, C-contiguous, finite, unit-norm rows: the form inner-product search needs."""
    vectors = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if vectors.ndim != 2 or (dim is not None and vectors.shape[1] != dim):
        raise UserError(f"expected vectors of shape [N, {dim or 'D'}], got {list(vectors.shape)}")
    if not np.isfinite(vectors).all():
        raise UserError("vectors contain NaN or infinity")
    faiss.normalize_L2(vectors)
    return vectors


def _read_metadata(path: Path) -> pa.Table:
    """The schema's columns (only those reach clients), with nulls for optional ones an older index lacks."""
    present = set(pq.read_schema(path).names)
    table = pq.read_table(path, columns=[c for c in METADATA_SCHEMA.names if c in present or c not in OPTIONAL_COLUMNS])
    for name in OPTIONAL_COLUMNS:
        if name not in present:
            table = table.append_column(name, pa.nulls(table.num_rows, METADATA_SCHEMA.field(name).type))
    return table.select(METADATA_SCHEMA.names).cast(METADATA_SCHEMA)


def _check_rows(metadata: pa.Table, n: int, thumbnails: Sequence[bytes] | None = None) -> None:
    if metadata.num_rows != n:
        raise ValueError(f"{metadata.num_rows} metadata rows for {n} vectors")
    if thumbnails is not None and len(thumbnails) != n:
        raise ValueError(f"{len(thumbnails)} thumbnails for {n} vectors")
    if metadata.schema != METADATA_SCHEMA:
        raise ValueError("metadata must come from metadata_table()")


__all__ = ["GalleryIndex", "INDEX_TYPES", "choose_index_type", "memory_estimate", "metadata_table"]
