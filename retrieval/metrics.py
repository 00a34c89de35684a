"""Benign retrieval metrics (docs/method.md#benign-metrics): query set = gallery = all test embeddings, each query's own entry excluded.

Rankings are computed in blocks of queries, so memory is bounded by block size x gallery size rather than N^2
(a 60k-image SOP gallery fits). The query itself is forced to rank first before the first element is dropped; the
reference drops whatever sorts first, which only differs when exact duplicates tie with it.
A query with no other item of its class (a "lone" query) counts as a miss / zero AP in every average.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from retrieval.datasets import ImageDataset
from retrieval.robustness.pgd import frozen

RECALL_KS = (1, 2)
FIXED_R = 10
"""The reference's "mAP@R" fixes R = 10; reported here as mAP@10."""
BLOCK_ELEMENTS = 1 << 22
"""Default distances per query block: ~4M, about 200 MB of sort and precision temporaries at peak."""


def embed(
    model: nn.Module, data: Dataset | torch.Tensor, batch_size: int = 256, *, num_workers: int = 0
) -> torch.Tensor:
    """Embeddings [N, D] on the CPU, computed in eval mode without gradients (training mode is restored after)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with frozen(model) as net, torch.no_grad():
        return torch.cat([net(x.to(device)).float().cpu() for x in _batches(data, batch_size, num_workers)])


def benign_metrics(embeddings: torch.Tensor, labels: torch.Tensor, *, chunk: int | None = None) -> dict[str, float]:
    """R@1, R@2, mAP, mAP@R (Musgrave: R = same-label count), mAP@10 (reference) and NMI, all in [0, 1]."""
    scores = ranking_metrics(embeddings, labels, chunk=chunk)
    scores["NMI"] = nmi(embeddings, labels)
    return scores


def ranking_metrics(embeddings: torch.Tensor, labels: torch.Tensor, *, chunk: int | None = None) -> dict[str, float]:
    """All rank-based metrics from one pass of blocked full rankings (`chunk` = queries per block)."""
    x = embeddings.detach().float().cpu()
    y = labels.detach().long().cpu()
    n = len(x)
    if n < 2:
        raise ValueError("retrieval metrics need at least 2 embeddings")
    step = chunk or max(1, BLOCK_ELEMENTS // n)
    blocks = [per_query_scores(_ranked_matches(x, y, i, min(i + step, n))) for i in range(0, n, step)]
    return {key: float(torch.cat([b[key] for b in blocks]).double().mean()) for key in blocks[0]}


def nmi(embeddings: torch.Tensor, labels: torch.Tensor, *, seed: int = 123, niter: int = 25) -> float:
    """faiss k-means with k = number of classes (the reference's CPU settings), scored by sklearn's NMI."""
    import faiss
    from sklearn.metrics import normalized_mutual_info_score

    x = np.ascontiguousarray(embeddings.detach().float().cpu().numpy())
    y = labels.detach().cpu().numpy()
    k = len(np.unique(y))
    if k < 2 or k > len(x):
        raise ValueError(f"NMI needs between 2 and {len(x)} classes, got {k}")
    kmeans = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False)
    kmeans.cp.min_points_per_centroid = 1  # only silences faiss's "too few points" warning
    kmeans.train(x)
    _, assignment = kmeans.index.search(x, 1)
    return float(normalized_mutual_info_score(y, assignment.ravel()))


def per_query_scores(match: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-query metrics from relevance in ranked order (self removed): bool [Q, G] -> {metric: float [Q]}.

    With pos_i the 1-based position of the i-th of K relevant items:
    R@k = [pos_1 <= k]; AP = (1/K) sum_i i/pos_i; AP@R = (1/K) sum_{i: pos_i <= K} i/pos_i;
    AP@10 = (1/10) sum_{i: pos_i <= 10} i/pos_i. A query with K = 0 scores 0 everywhere.
    """
    m = match.float()
    positions = torch.arange(1, m.shape[1] + 1, dtype=m.dtype)
    hits = m * m.cumsum(dim=1) / positions  # precision@j at relevant positions j, 0 elsewhere
    k_rel = m.sum(dim=1)
    scores = {f"R@{k}": match[:, :k].any(dim=1).float() for k in RECALL_KS}
    scores["mAP"] = hits.sum(dim=1) / k_rel.clamp_min(1)
    scores["mAP@R"] = hits.masked_fill(positions[None, :] > k_rel[:, None], 0).sum(dim=1) / k_rel.clamp_min(1)
    scores[f"mAP@{FIXED_R}"] = hits[:, :FIXED_R].sum(dim=1) / FIXED_R
    return scores


def _ranked_matches(x: torch.Tensor, y: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Relevance of each gallery item in ranked order for queries start..stop, self removed: bool [b, N-1].

    Ranks by ||g||^2 - 2 q.g, the Euclidean order without the per-query constant ||q||^2 and the monotone square
    root (same Gram form as retrieval.distances, fewer passes). numpy's argsort is about 2x faster than torch's on CPU.
    """
    queries = x[start:stop]
    key = torch.addmm((x * x).sum(dim=1)[None, :], queries, x.T, alpha=-2.0)
    rows = torch.arange(stop - start)
    key[rows, rows + start] = -torch.inf  # the query itself ranks first and is the element dropped
    order = torch.from_numpy(np.argsort(key.numpy(), axis=1)[:, 1:])
    relevant = y[None, :] == y[start:stop, None]
    return relevant.gather(1, order)


def _batches(data: Dataset | torch.Tensor, batch_size: int, num_workers: int) -> Iterator[torch.Tensor]:
    tensors = data if isinstance(data, torch.Tensor) else data.tensors() if isinstance(data, ImageDataset) else None
    if tensors is not None:
        yield from tensors.split(batch_size)
        return
    for images, _ in DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        yield images
