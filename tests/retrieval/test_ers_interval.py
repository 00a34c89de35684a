"""The bootstrap interval of ERS over attacked queries (its defaults, the level's meaning, the numeric type of the
inputs), and the error that names missing attack values."""

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


def _per_query(queries: int = 40, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {key: rng.uniform(0.0, 1.0, queries) for key in ATTACK_KEYS}


def test_the_default_is_2000_resamples_seed_0_at_95_percent():
    """Stored results quote intervals computed with the defaults; changing one would silently change them."""
    per_query = _per_query()
    assert ers_interval(per_query) == ers_interval(per_query, resamples=2000, level=0.95, seed=0)
    assert ers_interval(per_query) != ers_interval(per_query, resamples=2001)


def test_a_zero_level_interval_is_the_bootstrap_median_point():
    """The level is the central mass kept: nothing kept leaves one point, and more kept never narrows it."""
    per_query = _per_query()
    low, high = ers_interval(per_query, level=0.0)
    assert low == high
    previous = (low, high)
    for level in (0.5, 0.8, 0.95, 1.0):
        current = ers_interval(per_query, level=level)
        assert current[0] <= previous[0] and current[1] >= previous[1]
        previous = current


def test_float32_inputs_give_the_float64_interval():
    """Per-query values often arrive as float32 tensors' numpy arrays; the bootstrap still averages in float64."""
    single = {key: values.astype(np.float32) for key, values in _per_query().items()}
    as_python_floats = {key: [float(v) for v in values] for key, values in single.items()}
    assert ers_interval(single) == ers_interval(as_python_floats)
