"""Shared by the service benchmarks: tiny artifacts (and a 10k gallery), a `robust-retrieval serve` subprocess, the
server's CPU seconds from /proc, and an async client that records every request's latency and status."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "bench-key"
KEEPALIVE_EXPIRY_S = 4.0
"""Below the service's idle keep-alive (5 s): httpx's default, equal to it, loses a request now and then to the race
between the server closing an idle connection and the client reusing it (README, "Limits under hostile clients")."""
from retrieval.datasets import load_dataset
from tests.support.artifacts import Artifacts, build_artifacts, write_index  # the tests\' artifact builder
from tests.support.ports import free_port
from tests.support.service import png


def artifacts(workdir: Path) -> Artifacts:
    return build_artifacts(workdir)


def fashion_10k(workdir: Path) -> Artifacts:
    """The tests' model at the default 512-d embedding over all 10,000 Fashion-MNIST test images (flat index)."""
    art = build_artifacts(workdir, embedding_dim=512)
    test = load_dataset("fashion-mnist", "test")
    index = art.root / "fashion-10k"
    write_index(art.bundle, test.tensors(), test.labels, index, [test.source(i) for i in range(len(test))])
    return Artifacts(bundle=art.bundle, index=index, root=art.root, queries=art.queries, query_labels=art.query_labels)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads together (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and all its descendants (the service's decoding processes and their forkserver):
    each process's own time plus that of its children it has already reaped (fields 14-17), so a decoding process
    replaced during a run still counts, through its parent."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return total


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Poll /readyz until 200; RuntimeError when the process exits or `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the server did not become ready")
        time.sleep(0.1)


@contextlib.contextmanager
def served(art: Artifacts, *extra: str, log_level: str = "warning", log_file: Path | None = None,
           cpus: set[int] | None = None, root: Path = ROOT) -> Iterator[tuple[str, subprocess.Popen]]:
    """The real command line, probes on, until ready (its log to `log_file` if given); stopped (SIGTERM) afterwards.
    With `cpus`, the server runs on those cores only (set before it starts any thread, so all of them inherit it);
    with `root`, the service is the code of that checkout (another revision, for a before/after comparison)."""
    port = free_port()
    env = os.environ | {"RR_API_KEY": API_KEY, "RR_LOG_LEVEL": log_level}
    cmd = [sys.executable, "-c", "from serve.cli import main; main()", "serve", str(art.index), "--bundle",
           str(art.bundle), "--port", str(port), "--enable-probe", *extra]
    log = open(log_file, "ab") if log_file else None
    proc = subprocess.Popen(cmd, env=env, cwd=root, stderr=log)
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, 120)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(30)
        if log:
            log.close()


@dataclass
class Record:
    latencies: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self, path: str | None = None) -> dict:
        """Latency percentiles, req/s and 5xx count, of all requests or of those to `path`."""
        kept = [i for i, p in enumerate(self.paths) if path in (None, p)]
        ms = sorted(self.latencies[i] * 1000 for i in kept)
        return {
            "requests": len(ms),
            "p50_ms": round(statistics.median(ms), 3) if ms else None,
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 3) if ms else None,
            "throughput_rps": round(len(ms) / self.seconds, 1) if self.seconds else None,
            "server_errors": sum(self.statuses[i] >= 500 for i in kept),
            "transport_errors": sum(self.statuses[i] == 0 for i in kept),
        }


async def timed_post(client: httpx.AsyncClient, record: Record, path: str, **kwargs) -> None:
    """One request's latency and status; a connection that fails before an answer is recorded as status 0."""
    start = time.perf_counter()
    try:
        status = (await client.post(path, **kwargs)).status_code
    except httpx.TransportError:
        status = 0
    record.latencies.append(time.perf_counter() - start)
    record.statuses.append(status)
    record.paths.append(path)


async def closed_loop(url: str, concurrency: int, *, requests: int | None = None, seconds: float | None = None,
                      make_request=None) -> Record:
    """`concurrency` clients each sending the next request as soon as the last answered."""
    record, start = Record(), time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency,
                          keepalive_expiry=KEEPALIVE_EXPIRY_S)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        counter = iter(range(requests if requests is not None else 10**12))

        async def worker() -> None:
            for i in counter:
                if seconds is not None and time.perf_counter() - start > seconds:
                    return
                await make_request(client, record, i)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    record.seconds = time.perf_counter() - start
    return record
