"""The one thread count (CPU affinity, not the machine's core count, and OMP_NUM_THREADS when set), and the one place
that applies it to torch and FAISS."""

from __future__ import annotations

import os
import threading

import faiss
import pytest
import torch

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


@pytest.fixture()
def restore_torch_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_torch_threads_set_once_reach_threads_started_later(restore_torch_threads):
    """What lets the service set torch's count at start-up instead of in every request thread."""
    assert threads.use_torch_threads(3) == 3
    seen = []
    worker = threading.Thread(target=lambda: seen.append((torch.ones(2) + 1, torch.get_num_threads())[1]))
    worker.start()
    worker.join(timeout=60)
    assert seen == [3]


def test_torch_threads_default_to_the_one_count(restore_torch_threads, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.use_torch_threads() == 3 == torch.get_num_threads()


def test_serial_faiss_runs_on_one_thread_and_restores_the_count_even_after_an_error():
    previous = faiss.omp_get_max_threads()
    try:
        threads.use_faiss_threads(3)
        with pytest.raises(KeyError), threads.serial_faiss():
            assert faiss.omp_get_max_threads() == 1
            raise KeyError
        assert faiss.omp_get_max_threads() == 3
    finally:
        faiss.omp_set_num_threads(previous)
