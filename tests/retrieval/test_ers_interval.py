"""The bootstrap interval of ERS over attacked queries, and the error that names missing attack values."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.errors import UserError
from retrieval.robustness.ers import ATTACK_KEYS, ers, ers_interval, ers_normalize

RAW = dict(zip(ATTACK_KEYS, (15.5, 37.7, 16.6, 30.9, 0.753, 0.506, 17.9, 16.7, 27.3, 2.9)))


def spread(queries: int, seed: int = 0) -> dict[str, list[float]]:
    """Per-query values scattered around RAW."""
    rng = np.random.default_rng(seed)
    return {k: list(v + rng.normal(0, 0.1 if k in ("TMA", "ES:D") else 10, queries)) for k, v in RAW.items()}


def test_identical_queries_give_a_point_interval_at_the_ers():
    low, high = ers_interval({k: [v] * 5 for k, v in RAW.items()})
    assert low == pytest.approx(ers(RAW)) and high == pytest.approx(ers(RAW))


def test_interval_brackets_the_ers_of_the_means_and_widens_with_the_level():
    per_query = spread(64)
    centre = ers({k: float(np.mean(v)) for k, v in per_query.items()})
    low, high = ers_interval(per_query, level=0.9)
    wide_low, wide_high = ers_interval(per_query, level=0.99)
    assert wide_low < low < centre < high < wide_high
    assert high - low < 10  # 64 queries pin ERS down to a few points


def test_interval_is_seeded():
    per_query = spread(16)
    assert ers_interval(per_query, seed=3) == ers_interval(per_query, seed=3)
    assert ers_interval(per_query, seed=3) != ers_interval(per_query, seed=4)
    assert ers_interval(per_query) == ers_interval(per_query, seed=0)


def test_half_width_matches_the_normal_approximation():
    """Only CA+ varies (weight 2/10 in ERS): the 95% half-width is about 1.96 x 0.2 x sd / sqrt(n)."""
    values = np.random.default_rng(1).normal(30, 20, 400)
    per_query = {k: [v] * 400 for k, v in RAW.items()} | {"CA+": list(values)}
    low, high = ers_interval(per_query)
    assert (high - low) / 2 == pytest.approx(1.96 * 0.2 * values.std() / np.sqrt(400), rel=0.1)


def test_two_queries_are_enough_and_both_are_resampled():
    low, high = ers_interval({k: [v, v] for k, v in RAW.items()} | {"CA+": [0.0, 50.0]})
    assert low == pytest.approx(ers(RAW | {"CA+": 0.0})) and high == pytest.approx(ers(RAW | {"CA+": 50.0}))


def test_interval_needs_two_queries_of_every_attack():
    message = "^a bootstrap interval needs per-query values of all ten attacks for at least 2 queries$"
    with pytest.raises(UserError, match=message):
        ers_interval({k: [v] for k, v in RAW.items()})


def test_missing_values_are_named_in_the_error():
    partial = {k: v for k, v in RAW.items() if k not in ("CA+", "TMA")}
    with pytest.raises(UserError, match="missing: CA\\+, TMA$"):
        ers_normalize(partial)
