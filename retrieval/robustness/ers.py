"""Empirical Robustness Score (docs/method.md#empirical-robustness-score-ers): ten attack values mapped to 0-100 scores, then averaged.

Inputs are in table units: percent for ranks and recalls, raw for TMA (a cosine) and ES:D (a distance in [0, 2]).
Nothing is clipped, as in the reference: CA+/QA+ above 50 score above 100, and ES:D only makes sense for
normalised embeddings (metric N).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from retrieval.attacks import MEASURES
from retrieval.errors import UserError

ATTACK_KEYS: tuple[str, ...] = tuple(MEASURES)
"""The ten measured values in the paper's column order."""


def normalized_score(key: str, value: float) -> float:
    """One raw attack value -> its normalised score s_k (higher = more robust), as its attack's Measure says."""
    return MEASURES[key].score(float(value))


def ers_normalize(values: Mapping[str, float]) -> dict[str, float]:
    """Each raw attack value -> its normalised score s_k (higher = more robust)."""
    missing = [k for k in ATTACK_KEYS if k not in values]
    if missing:
        raise UserError(f"ERS needs all ten attack values; missing: {', '.join(missing)}")
    return {k: normalized_score(k, values[k]) for k in ATTACK_KEYS}


def ers(values: Mapping[str, float]) -> float:
    """The mean of the ten normalised scores (the paper prints it with one decimal)."""
    scores = ers_normalize(values)
    return sum(scores.values()) / len(scores)


def ers_interval(
    per_query: Mapping[str, Sequence[float]], *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ERS over the attacked queries (resampled with replacement)."""
    values = np.array([per_query[k] for k in ATTACK_KEYS], dtype=np.float64)  # [10, queries]
    if values.ndim != 2 or values.shape[1] < 2:
        raise UserError("a bootstrap interval needs per-query values of all ten attacks for at least 2 queries")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, values.shape[1], size=(resamples, values.shape[1]))
    means = values[:, picks].mean(axis=2)  # [10, resamples]
    scores = np.array([[ers(dict(zip(ATTACK_KEYS, column)))] for column in means.T]).ravel()
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(scores, [tail, 100 - tail])
    return float(low), float(high)
