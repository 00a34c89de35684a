"""retrieval.robustness.ers.ers_interval: the parts of its contract the broader ERS tests left open (defaults, the level's
meaning, the numeric type of the inputs)."""

from __future__ import annotations

import numpy as np

from retrieval.robustness.ers import ATTACK_KEYS, ers_interval


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
