"""Per-epoch validation: benign retrieval metrics on the test split, a collapse check and a strong-attack proxy.

A collapsed model maps everything to (nearly) one point; adversarial training can drive it there (see
docs/method.md#min-max-hmx2). We flag it when the mean pairwise cosine of one validation batch exceeds 0.95 or R@1 is near chance.

The proxy (docs/method.md#validation-proxy) attacks a fixed, seeded, class-balanced handful of validation images with
the strong attacker's schedule (APGD) under QA- and TMA, against the validation embeddings, so a run's curve shows
robustness beside R@1 for seconds of work; `evaluate` remains the measurement.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from retrieval.attacks import get_attack
from retrieval.distances import normalize
from retrieval.metrics import benign_metrics, embed
from retrieval.protocol import STRONG, attack_config, protocol_for
from retrieval.robustness.ers import normalized_score
from retrieval.robustness.pgd import unwrap
from retrieval.sampling import balanced_subset

COLLAPSE_COSINE = 0.95
COLLAPSE_BATCH = 128
PROXY_ATTACKS = ("QA-", "TMA")
PROXY_SEED = 0


def validate(
    model: nn.Module,
    data: torch.Tensor | Dataset,
    labels: torch.Tensor,
    *,
    batch_size: int,
    num_workers: int = 0,
    attack_queries: int = 0,
    attack_steps: int = 32,
) -> dict[str, Any]:
    """Benign metrics, `mean_cosine` of the first validation batch and `collapsed`, plus with `attack_queries` the
    strong-attack proxy (`robust_QA-`, `robust_TMA` and their mean normalised score `robust_proxy`, 0-100, higher is
    more robust); leaves every RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        embeddings = embed(model, data, batch_size=batch_size, num_workers=num_workers).float().cpu()
        metrics = {k: float(v) for k, v in benign_metrics(embeddings, labels.cpu()).items()}
        if attack_queries:
            metrics |= robustness_proxy(model, data, labels, embeddings, attack_queries, attack_steps)
    cosine = mean_pairwise_cosine(embeddings[:COLLAPSE_BATCH])
    chance = 1.0 / max(int(torch.unique(labels).numel()), 1)
    metrics["mean_cosine"] = cosine
    metrics["collapsed"] = bool(cosine > COLLAPSE_COSINE or metrics["R@1"] < 1.5 * chance)
    return metrics


def robustness_proxy(
    model: nn.Module, data: torch.Tensor | Dataset, labels: torch.Tensor, embeddings: torch.Tensor, queries: int,
    steps: int,
) -> dict[str, float]:
    """QA- and TMA under APGD (`steps`, one start) on a seeded class-balanced sample of the validation images."""
    device = next(model.parameters()).device
    picked = balanced_subset(labels, min(queries, len(labels)), PROXY_SEED, purpose="validation-attack")
    images = data[picked] if isinstance(data, torch.Tensor) else torch.stack([data[int(i)][0] for i in picked])
    cfg = attack_config(protocol_for(int(unwrap(model).input_size)).evaluation.name, attacker=STRONG, steps=steps, restarts=0)
    gallery = normalize(embeddings).to(device)
    values = {}
    for name in PROXY_ATTACKS:
        attack = get_attack(name)(gallery, labels.to(device), cfg, torch.Generator().manual_seed(PROXY_SEED))
        result = attack(model, images.to(device), labels[picked].to(device), picked.to(device))
        values[name] = float(result.value.float().mean())
    score = sum(normalized_score(k, v) for k, v in values.items()) / len(values)
    return {**{f"robust_{k}": v for k, v in values.items()}, "robust_proxy": score}


def mean_pairwise_cosine(embeddings: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of distinct rows."""
    n = embeddings.shape[0]
    if n < 2:
        return 0.0
    unit = torch.nn.functional.normalize(embeddings, dim=1)
    gram = unit @ unit.T
    return float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1)))
