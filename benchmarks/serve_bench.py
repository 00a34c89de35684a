"""Service latency against its in-process floor, in one run.

floor   decode + onnxruntime embed + FAISS search of the same image in this process (median)
HTTP    POST /search through `robust-retrieval serve` (uvicorn) at concurrency 1, 8 and 32: p50, p99, throughput
probe   POST /probe, GTT with 32 steps on the C2F2 model (p50)

Targets: p50 at c=1 <= 1.5 x floor + 1 ms; best throughput >= 70% of cores / floor; probe p50 <= 1 s.
The load generator runs on the same machine and takes CPU from the server: on few cores the throughput figure
is a lower bound. Usage: python benchmarks/serve_bench.py [--requests 300] [--probes 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from serve_harness import API_KEY, ROOT, artifacts, closed_loop, png, served, timed_post

from retrieval.atomic import atomic_write_json
from serve.engine import load_engine
from serve.settings import Settings
from serve.uploads import decode

CONCURRENCY = (1, 8, 32)


def floor_ms(art, image: bytes, n: int) -> float:
    settings = Settings(index=art.index, bundle=art.bundle)
    engine = load_engine(art.index, art.bundle, threads=1, with_torch=False)
    times = []
    for i in range(n + 20):
        start = time.perf_counter()
        embedding, _ = engine.embed(decode(image, engine.bundle, settings))
        engine.search(embedding, 10)
        if i >= 20:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per concurrency level")
    parser.add_argument("--probes", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_bench.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        art = artifacts(Path(tmp))
        image = png(art.queries[0])
        floor = floor_ms(art, image, args.requests)
        files = {"image": ("q.png", image, "image/png")}

        async def search(client, record, i):
            await timed_post(client, record, "/search", files=files, data={"top_k": "10"})

        async def probe(client, record, i):
            await timed_post(client, record, "/probe", files=files, data={"attack": "GTT", "steps": "32"},
                             headers={"X-API-Key": API_KEY})

        with served(art) as (url, _):
            asyncio.run(closed_loop(url, 4, requests=50, make_request=search))  # warm connections and threads
            http = {c: asyncio.run(closed_loop(url, c, requests=args.requests, make_request=search)).summary()
                    for c in CONCURRENCY}
            probes = asyncio.run(closed_loop(url, 1, requests=args.probes, make_request=probe)).summary()
    report(floor, http, probes, args.out)


def report(floor: float, http: dict, probes: dict, out: Path) -> None:
    cores = os.cpu_count() or 1
    ideal = cores * 1000 / floor
    best = max(r["throughput_rps"] for r in http.values())
    targets = {
        "p50_c1_ms <= 1.5 x floor + 1": http[1]["p50_ms"] <= 1.5 * floor + 1,
        "throughput >= 0.7 x cores / floor": best >= 0.7 * ideal,
        "probe p50 <= 1000 ms": probes["p50_ms"] <= 1000,
    }
    table = Table(title=f"serve_bench: floor {floor:.2f} ms, {cores} cores, ideal {ideal:.0f} req/s")
    for column in ("load", "requests", "p50 ms", "p99 ms", "req/s", "5xx"):
        table.add_column(column)
    for name, r in [*((f"/search c={c}", r) for c, r in http.items()), ("/probe GTT 32 steps", probes)]:
        table.add_row(name, str(r["requests"]), f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                      f"{r['throughput_rps']:.1f}", str(r["server_errors"]))
    console = Console()
    console.print(table)
    for target, ok in targets.items():
        console.print(f"{'PASS' if ok else 'MISS'}  {target}")
    atomic_write_json(out, {"floor_ms": round(floor, 3), "cores": cores, "ideal_rps": round(ideal, 1),
                            "search": {str(c): r for c, r in http.items()}, "probe_gtt_32": probes,
                            "targets": targets})


if __name__ == "__main__":
    main()
