"""Soak test: 32 concurrent clients on 127.0.0.1 for 60 s, /search with an occasional /probe.

Pass criteria: zero 5xx, no connection dropped before its answer, and the server's resident memory in the last 10 s
within 10% of the first 10 s.
Prints a summary and writes benchmarks/results/load_test.json. Usage: python -m benchmarks.load_test [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.serve_harness import API_KEY, ROOT, artifacts, closed_loop, png, served, timed_post

from retrieval.atomic import atomic_write_json


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def sample_rss(pid: int, stop: threading.Event, samples: list[tuple[float, int]]) -> None:
    start = time.perf_counter()
    while not stop.wait(0.5):
        samples.append((time.perf_counter() - start, rss_bytes(pid)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--probe-every", type=int, default=50,
                        help="one request in this many is a /probe (8 steps) instead of a /search; 0: none")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "load_test.json")
    parser.add_argument("--server-log", type=Path, default=ROOT / "benchmarks" / "out" / "load_test_server.log")
    parser.add_argument("--log-level", default="warning", help="the server's (info logs every request)")
    args = parser.parse_args()
    args.server_log.parent.mkdir(parents=True, exist_ok=True)
    args.server_log.unlink(missing_ok=True)
    window = min(10.0, args.seconds / 3)
    with tempfile.TemporaryDirectory() as tmp:
        art = artifacts(Path(tmp))
        images = [png(q) for q in art.queries[:64]]

        async def request(client, record, i):
            files = {"image": ("q.png", images[i % len(images)], "image/png")}
            if args.probe_every and i % args.probe_every == args.probe_every - 1:
                await timed_post(client, record, "/probe", files=files, data={"steps": "8"},
                                 headers={"X-API-Key": API_KEY})
            else:
                await timed_post(client, record, "/search", files=files)

        with served(art, log_level=args.log_level, log_file=args.server_log) as (url, proc):
            samples: list[tuple[float, int]] = []
            stop = threading.Event()
            sampler = threading.Thread(target=sample_rss, args=(proc.pid, stop, samples))
            sampler.start()
            try:
                record = asyncio.run(closed_loop(url, args.clients, seconds=args.seconds, make_request=request))
            finally:
                stop.set()
                sampler.join()
    first = statistics.mean(r for t, r in samples if t <= window)
    last = statistics.mean(r for t, r in samples if t >= samples[-1][0] - window)
    summary = record.summary() | {
        "seconds": round(record.seconds, 1), "clients": args.clients,
        "status_counts": {str(s): record.statuses.count(s) for s in sorted(set(record.statuses))},
        "rss_first_mb": round(first / 2**20, 1), "rss_last_mb": round(last / 2**20, 1),
        "rss_growth": round(last / first - 1, 4),
        "by_path": {path: record.summary(path) for path in ("/search", "/probe")},  # a probe's tail is not a search's
    }
    summary["pass"] = (summary["server_errors"] == 0 and summary["transport_errors"] == 0
                       and summary["rss_growth"] < 0.10)
    print(json.dumps(summary, indent=2))
    atomic_write_json(args.out, summary)


if __name__ == "__main__":
    main()
