"""How many threads a process should use: the one answer for torch, onnxruntime and FAISS.

`os.cpu_count()` counts every core of the machine; a process pinned with taskset, a container CPU set or a
scheduler may run on fewer, and oversubscribing them slows every thread down. So the count comes from the CPU
affinity mask, and OMP_NUM_THREADS (which torch honours too) wins when the user set it.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), or all cores where the platform has no affinity call."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_threads() -> int:
    """OMP_NUM_THREADS when set to a positive number, else the available cores."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return available_cores()
