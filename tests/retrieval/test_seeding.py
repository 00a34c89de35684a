"""derive_seed: the one seed derivation of training and evaluation streams."""

from __future__ import annotations

import os
import subprocess
import sys

from retrieval.seeding import derive_seed, generator

PARTS = [(0, "noise", 0), (0, "noise", 1), (0, "CA+", 0), (1, "noise", 0), (0, "data", 3), (0, "model")]


def test_a_seed_is_the_same_in_every_process():
    """Python's own hash() of a str changes per process (PYTHONHASHSEED); a run's streams must not."""
    code = f"from retrieval.seeding import derive_seed; print([derive_seed(*p) for p in {PARTS!r}])"
    other = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    assert str(hash("a")) != subprocess.run(  # the other process really hashes differently
        [sys.executable, "-c", "print('a'.__hash__())"], capture_output=True, text=True, check=True, timeout=60,
        env={**os.environ, "PYTHONHASHSEED": other}).stdout.strip()
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                           env={**os.environ, "PYTHONHASHSEED": other}).stdout.strip()
    assert there == str([derive_seed(*p) for p in PARTS])


def test_each_purpose_and_base_seed_gets_its_own_seed_that_torch_accepts():
    seeds = [derive_seed(*p) for p in PARTS]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**63 for s in seeds)
    first, again = generator(0, "noise", 0), generator(0, "noise", 0)
    assert first.initial_seed() == derive_seed(0, "noise", 0) == again.initial_seed()
