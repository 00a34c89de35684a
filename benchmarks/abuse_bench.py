"""Ordinary /search latency while two clients send decode bombs without pause (issue 12).

Starts `robust-retrieval serve` from a source tree (this one by default; `--source` another checkout, e.g. the
commit before the hardening, to measure "before"), measures one ordinary client's sequential /search for a few
seconds alone, then for `--seconds` while two attacker threads keep sending the bombs of tests/serve/bombs.py
(progressive JPEG with 2000 scans, RLE BMP, animated WebP with a huge canvas; 4096x4096 each). Prints a table and
records the run under `--label` in benchmarks/results/abuse_bench.json.

    taskset -c 0 .venv/bin/python benchmarks/abuse_bench.py --label after
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "serve"), str(ROOT / "benchmarks")]
import bombs  # noqa: E402  (the tests' bomb builders)
from serve_artifacts import build_artifacts  # noqa: E402
from serve_helpers import png  # noqa: E402
from serve_harness import free_port, wait_ready  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "abuse_bench.json"
CLIENT_TIMEOUT_S = 300.0
BOMBS = {
    "jpeg_2000_scans": (lambda: bombs.progressive_jpeg_bomb(4096, 2000), "image/jpeg"),
    "rle_bmp": (lambda: bombs.rle_bmp_bomb(4096, 4096), "image/bmp"),
    "webp_canvas": (lambda: bombs.animated_webp_canvas_bomb(4096, 1), "image/webp"),
}


@contextlib.contextmanager
def _served(source: Path, index: Path, bundle: Path):
    port = free_port()
    env = os.environ | {"RR_API_KEY": "bench-key", "RR_LOG_LEVEL": "warning", "PYTHONPATH": str(source)}
    proc = subprocess.Popen([sys.executable, "-c", "from serve.cli import main; main()", "serve", str(index),
                             "--bundle", str(bundle), "--port", str(port), "--enable-probe"], cwd=source, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, 180)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:  # the old server did not stop while a decode ran
            proc.kill()
            proc.wait(10)


def _ordinary(url: str, query: bytes, seconds: float) -> dict:
    """Sequential ordinary searches for `seconds` (the last one may end later: it is waited for)."""
    latencies, statuses, start = [], [], time.perf_counter()
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            try:
                statuses.append(client.post("/search", files={"image": ("q.png", query, "image/png")}).status_code)
            except httpx.TimeoutException:
                statuses.append(0)
            latencies.append(time.perf_counter() - t)
    ms = sorted(x * 1000 for x in latencies)
    return {"requests": len(ms), "p50_ms": round(statistics.median(ms), 1),
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1), "max_ms": round(ms[-1], 1),
            "ok": statuses.count(200), "errors": len(statuses) - statuses.count(200)}


def _attack(url: str, payloads: list[tuple[str, bytes, str]], stop: threading.Event, log: list) -> None:
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
        i = 0
        while not stop.is_set():
            name, data, mime = payloads[i % len(payloads)]
            t = time.perf_counter()
            try:
                response = client.post("/search", files={"image": (name, data, mime)})
                outcome = f"{response.status_code} {response.json().get('error', {}).get('code', '')}".strip()
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            log.append((name, outcome, time.perf_counter() - t))
            i += 1


def run(source: Path, seconds: float, workdir: Path) -> dict:
    art = build_artifacts(workdir)
    query = png(art.queries[0])
    payloads = [(name, make(), mime) for name, (make, mime) in BOMBS.items()]
    with _served(source, art.index, art.bundle) as url:
        baseline = _ordinary(url, query, 5.0)
        stop, log = threading.Event(), []
        attackers = [threading.Thread(target=_attack, args=(url, payloads[i:] + payloads[:i], stop, log))
                     for i in range(2)]
        for thread in attackers:
            thread.start()
        try:
            under_attack = _ordinary(url, query, seconds)
        finally:
            stop.set()
            for thread in attackers:
                thread.join(CLIENT_TIMEOUT_S)
        after = _ordinary(url, query, 3.0)
    bomb_summary = {}
    for name, _, _ in payloads:
        runs = [(outcome, s) for n, outcome, s in log if n == name]
        if runs:
            bomb_summary[name] = {"sent": len(runs), "answers": sorted({o for o, _ in runs}),
                                  "max_s": round(max(s for _, s in runs), 2), "bytes": len(dict(BOMBS)[name][0]())}
    return {"seconds": seconds, "baseline": baseline, "under_attack": under_attack, "after_attack": after,
            "bombs": bomb_summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="after", help="Key of this run in the results file.")
    parser.add_argument("--source", type=Path, default=ROOT, help="Source tree whose server to measure.")
    parser.add_argument("--seconds", type=float, default=30.0, help="Duration of the attack.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="abuse-bench-") as workdir:
        result = run(args.source.resolve(), args.seconds, Path(workdir))
    result["cpus"] = len(os.sched_getaffinity(0))
    print(f"{'phase':<14}{'requests':>9}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}{'errors':>8}")
    for phase in ("baseline", "under_attack", "after_attack"):
        r = result[phase]
        print(f"{phase:<14}{r['requests']:>9}{r['p50_ms']:>10}{r['p99_ms']:>10}{r['max_ms']:>10}{r['errors']:>8}")
    for name, b in result["bombs"].items():
        print(f"bomb {name} ({b['bytes']} bytes): {b['sent']} sent, answers {b['answers']}, slowest {b['max_s']} s")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[args.label] = result
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
