"""Per-epoch validation: benign retrieval metrics on the test split plus a collapse check.

A collapsed model maps everything to (nearly) one point; adversarial training can drive it there (see
docs/method.md#min-max-hmx2). We flag it when the mean pairwise cosine of one validation batch exceeds 0.95 or R@1 is near chance.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from retrieval.metrics import benign_metrics, embed

COLLAPSE_COSINE = 0.95
COLLAPSE_BATCH = 128


def validate(
    model: nn.Module, data: torch.Tensor | Dataset, labels: torch.Tensor, *, batch_size: int, num_workers: int = 0
) -> dict[str, Any]:
    """Benign metrics, `mean_cosine` of the first validation batch and `collapsed`; leaves every RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        embeddings = embed(model, data, batch_size=batch_size, num_workers=num_workers).float().cpu()
        metrics = {k: float(v) for k, v in benign_metrics(embeddings, labels.cpu()).items()}
    cosine = mean_pairwise_cosine(embeddings[:COLLAPSE_BATCH])
    chance = 1.0 / max(int(torch.unique(labels).numel()), 1)
    metrics["mean_cosine"] = cosine
    metrics["collapsed"] = bool(cosine > COLLAPSE_COSINE or metrics["R@1"] < 1.5 * chance)
    return metrics


def mean_pairwise_cosine(embeddings: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of distinct rows."""
    n = embeddings.shape[0]
    if n < 2:
        return 0.0
    unit = torch.nn.functional.normalize(embeddings, dim=1)
    gram = unit @ unit.T
    return float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1)))
