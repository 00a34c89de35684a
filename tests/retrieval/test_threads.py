"""The one thread count: CPU affinity, not the machine's core count, and OMP_NUM_THREADS when set."""

from __future__ import annotations

import os

import pytest

from retrieval import threads


def test_available_cores_follow_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5}, raising=False)
    assert threads.available_cores() == 2


def test_without_an_affinity_call_every_core_counts(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert threads.available_cores() == 6


@pytest.mark.parametrize(("omp", "expected"), [("3", 3), (None, 2), ("0", 2), ("many", 2)])
def test_omp_num_threads_wins_when_it_is_a_positive_number(monkeypatch, omp, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert threads.default_threads() == expected
