"""Measure an approximate index against exact search, and pick the cheapest search setting that is good enough.

Queries are a random sample of gallery vectors; each query's own item is dropped from both the exact and the
approximate neighbour lists (leave-one-out), so recall is not inflated by trivially finding the query itself.
"""

from __future__ import annotations

import time
from typing import Sequence

import faiss
import numpy as np

from retrieval.threads import serial_faiss

RECALL_K = 10
RECALL_TARGET = 0.95
TUNE_MARGIN = 0.02
"""Tuning aims this far above the target: recall on held-out queries came out ~0.01 below the gallery sample's."""
SAMPLE_SIZE = 500
LATENCY_QUERIES = 100


def sample_ids(n: int, size: int = SAMPLE_SIZE, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, size), replace=False))


def exact_neighbours(vectors: np.ndarray, query_ids: np.ndarray, k: int = RECALL_K) -> np.ndarray:
    """Brute-force inner-product top-k of the sampled gallery items among all others, [Q, k]."""
    _, ids = faiss.knn(vectors[query_ids], vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    return _drop_self(ids, query_ids, k)


def recall_at_k(index: faiss.Index, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the exact top-k (k = truth width) that the index also returns."""
    k = truth.shape[1]
    _, ids = index.search(queries, k + 1)
    found = _drop_self(ids, query_ids, k)
    return float(np.mean([len(np.intersect1d(a[a >= 0], t)) / k for a, t in zip(found, truth)]))


def tune(
    index: faiss.Index,
    candidates: Sequence[dict[str, float]],
    queries: np.ndarray,
    query_ids: np.ndarray,
    truth: np.ndarray,
    target: float = RECALL_TARGET + TUNE_MARGIN,
) -> tuple[dict[str, float], float]:
    """Apply candidates (ordered cheapest first) until one reaches `target`; return it and its recall.

    If none reaches the target the last (most thorough) one stays applied.
    """
    params: dict[str, float] = {}
    recall = 0.0
    for params in candidates:
        apply_params(index, params)
        recall = recall_at_k(index, queries, query_ids, truth)
        if recall >= target:
            break
    return dict(params), recall


def apply_params(index: faiss.Index, params: dict[str, float]) -> None:
    space = faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, value)


def latency_ms(index: faiss.Index, queries: np.ndarray, k: int = RECALL_K) -> dict[str, float]:
    """Per-query latency of one-at-a-time, single-threaded searches (what a serving request sees), p50/p99 in ms."""
    times = []
    with serial_faiss():
        for q in queries:
            start = time.perf_counter()
            index.search(q[None, :], k)
            times.append((time.perf_counter() - start) * 1e3)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}


def _drop_self(ids: np.ndarray, query_ids: np.ndarray, k: int) -> np.ndarray:
    """First k ids of each row other than the query's own id (-1 pads rows that ran short)."""
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for row, (found, own) in enumerate(zip(ids, query_ids)):
        kept = found[(found != own) & (found >= 0)][:k]
        out[row, : len(kept)] = kept
    return out
