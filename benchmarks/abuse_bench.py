"""The service under hostile clients (issues 12 and 23): per attack, what the attacker gets, the ordinary client's
/search p50/p99 and the /readyz poll's slowest answer during the attack, and the server's RSS before and after.

Starts `robust-retrieval serve` from a source tree (this one by default; `--source` another checkout, e.g. a
`git worktree` of the commit before a change, to measure "before") on the tests' tiny model. First an idle phase
(the ordinary client alone: its p99 is the yardstick), then each attack for `--seconds` while one ordinary client
searches without pause (a new connection per request, as clients behind a balancer do) and a probe polls /readyz
every 100 ms. Prints a table and records the run under `--label` in benchmarks/results/abuse_bench.json.

    .venv/bin/python -m benchmarks.abuse_bench --label after
    git worktree add /tmp/before e888e75 && .venv/bin/python -m benchmarks.abuse_bench --source /tmp/before --label before
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import httpx
from PIL import Image

from benchmarks.serve_harness import wait_ready
from tests.support import bombs  # the tests' bomb builders
from tests.support.artifacts import build_artifacts
from tests.support.ports import free_port
from tests.support.service import png

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "benchmarks" / "results" / "abuse_bench.json"
ATTACK_TIMEOUT_S = 120.0
ORDINARY_TIMEOUT_S = 30.0
READYZ_EVERY_S = 0.1
NEW_CONNECTIONS = httpx.Limits(max_keepalive_connections=0)
Log = list


@contextlib.contextmanager
def _served(source: Path, index: Path, bundle: Path):
    port = free_port()
    env = os.environ | {"RR_API_KEY": "bench-key", "RR_LOG_LEVEL": "warning", "PYTHONPATH": str(source)}
    proc = subprocess.Popen([sys.executable, "-c", "from serve.cli import main; main()", "serve", str(index),
                             "--bundle", str(bundle), "--port", str(port), "--enable-probe"], cwd=source, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, 180)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:  # an old server that does not stop while a decode runs
            proc.kill()
            proc.wait(10)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def _tree_rss_mb(pid: int) -> float:
    """RSS of the server and every process below it (decoding processes included; shared pages counted twice)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError, StopIteration):
            total += _rss_mb(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total


def _percentiles(seconds: list[float]) -> dict:
    ms = sorted(x * 1000 for x in seconds) or [float("nan")]
    return {"requests": len(seconds), "p50_ms": round(statistics.median(ms), 1),
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1), "max_ms": round(ms[-1], 1)}


def _ordinary(url: str, query: bytes, stop: threading.Event, out: dict) -> None:
    """Sequential /search on a new connection each, until `stop`."""
    latencies, statuses = [], []
    with httpx.Client(base_url=url, timeout=ORDINARY_TIMEOUT_S, limits=NEW_CONNECTIONS) as client:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                statuses.append(client.post("/search", files={"image": ("q.png", query, "image/png")}).status_code)
            except httpx.HTTPError as exc:
                statuses.append(type(exc).__name__)
            latencies.append(time.perf_counter() - start)
    out.update(_percentiles(latencies), ok=statuses.count(200), not_ok=len(statuses) - statuses.count(200))


def _readyz(url: str, stop: threading.Event, out: dict) -> None:
    latencies, statuses = [], []
    with httpx.Client(base_url=url, timeout=ORDINARY_TIMEOUT_S, limits=NEW_CONNECTIONS) as client:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                statuses.append(client.get("/readyz").status_code)
            except httpx.HTTPError as exc:
                statuses.append(type(exc).__name__)
            latencies.append(time.perf_counter() - start)
            stop.wait(READYZ_EVERY_S)
    out.update(readyz_max_ms=round(max(latencies, default=0) * 1000, 1),
               readyz_not_200=len(statuses) - statuses.count(200))


def _outcome(response: httpx.Response) -> str:
    try:
        code = response.json().get("error", {}).get("code", "")
    except ValueError:
        code = ""
    return f"{response.status_code} {code}".strip()


def _posting(path: str, files: Callable[[], list], times: int | None = None) -> Callable:
    """An attack that posts `files()` to `path` until stopped (or `times` times)."""
    def attack(url: str, stop: threading.Event, log: Log) -> None:
        payload, sent = files(), 0
        with httpx.Client(base_url=url, timeout=ATTACK_TIMEOUT_S) as client:
            while not stop.is_set() and (times is None or sent < times):
                start = time.perf_counter()
                try:
                    log.append((_outcome(client.post(path, files=payload, data={"steps": "2"})),
                                time.perf_counter() - start))
                except httpx.HTTPError as exc:
                    log.append((type(exc).__name__, time.perf_counter() - start))
                sent += 1
    return attack


def _files(field: str, data: bytes, copies: int = 1) -> Callable[[], list]:
    return lambda: [(field, (f"{i}.bin", data, "application/octet-stream")) for i in range(copies)]


def _raw(request: bytes) -> Callable:
    """An attack that sends one raw request per connection and logs the status line it gets."""
    def attack(url: str, stop: threading.Event, log: Log) -> None:
        host, port = url.removeprefix("http://").split(":")
        while not stop.is_set():
            start = time.perf_counter()
            try:
                with socket.create_connection((host, int(port)), timeout=ORDINARY_TIMEOUT_S) as sock:
                    sock.sendall(request)
                    status = sock.recv(65536).split(b"\r\n", 1)[0].decode("latin-1")
                log.append((" ".join(status.split()[1:2]) or "closed", time.perf_counter() - start))
            except OSError as exc:
                log.append((type(exc).__name__, time.perf_counter() - start))
            stop.wait(0.05)
    return attack


def _idle_flood(count: int) -> Callable:
    """`count` sockets that connect and send nothing, each reopened as soon as the server closes it."""
    def attack(url: str, stop: threading.Event, log: Log) -> None:
        host, port = url.removeprefix("http://").split(":")
        selector, opened = selectors.DefaultSelector(), {}

        def open_one() -> None:
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect((host, int(port)))
            opened[sock] = time.perf_counter()
            selector.register(sock, selectors.EVENT_READ)

        for _ in range(count):
            open_one()
        while not stop.is_set():
            for key, _ in selector.select(timeout=0.1):
                sock = key.fileobj
                with contextlib.suppress(OSError):
                    sock.recv(1)
                selector.unregister(sock)
                log.append(("closed by server", time.perf_counter() - opened.pop(sock)))
                sock.close()
                open_one()
        for sock in opened:
            sock.close()
    return attack


def _attacks() -> dict[str, tuple[int, Callable]]:
    """name -> (attacker threads, attack)."""
    junk = bombs.eps_like((10 << 20) - 4096)
    text, costly = bombs.png_text_bomb(), bombs.costly_jpeg()
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(10_000))
    return {
        "decode bombs": (2, _posting("/search", _files("image", bombs.progressive_jpeg_bomb(4096, 2000)))),
        "png text bomb x12, then batch of 32": (1, _sequence(_posting("/search", _files("image", text), 12),
                                                              _posting("/search/batch", _files("images", text, 32),
                                                                       1))),
        "10 MiB not an image, two at once": (2, _posting("/search", _files("image", junk))),
        "10 MiB not an image, batch of 3": (1, _posting("/search/batch", _files("images", junk, 3))),
        "batch of 32 costly JPEGs (0.3 s each)": (2, _posting("/search/batch", _files("images", costly, 32))),
        "idle sockets x300": (1, _idle_flood(300)),
        "idle sockets x2000": (1, _idle_flood(2000)),
        "10,000 headers in one write": (1, _raw(b"GET /livez HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")),
        "form top_k of 5,000 digits": (1, _posting("/search", lambda: [
            ("image", ("q.png", png(Image.new("L", (28, 28))), "image/png")), ("top_k", (None, "9" * 5000))])),
        "GET /static/index.html": (1, _raw(b"GET /static/index.html HTTP/1.1\r\nHost: x\r\n\r\n")),
    }


def _sequence(*attacks: Callable) -> Callable:
    def attack(url: str, stop: threading.Event, log: Log) -> None:
        for part in attacks:
            part(url, stop, log)
    return attack


def _phase(url: str, pid: int, query: bytes, seconds: float, threads: int = 0, attack: Callable | None = None) -> dict:
    """The ordinary client and the /readyz probe for `seconds`, while `threads` attackers run `attack`."""
    stop, ordinary, ready, log = threading.Event(), {}, {}, []
    rss_before = _rss_mb(pid)
    workers = [threading.Thread(target=_ordinary, args=(url, query, stop, ordinary)),
               threading.Thread(target=_readyz, args=(url, stop, ready))]
    attackers = [threading.Thread(target=attack, args=(url, stop, log)) for _ in range(threads)]
    for thread in workers + attackers:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in workers + attackers:
        thread.join(ATTACK_TIMEOUT_S)
    time.sleep(1.0)  # what is freed is freed by now
    answers = sorted({outcome for outcome, _ in log})
    return {**ordinary, **ready, "rss_before_mb": round(rss_before), "rss_after_mb": round(_rss_mb(pid)),
            "tree_rss_after_mb": round(_tree_rss_mb(pid)), "attack_answers": answers[:4], "attacks_sent": len(log),
            "attack_max_s": round(max((s for _, s in log), default=0), 2)}


def run(source: Path, seconds: float, workdir: Path, only: list[str] | None) -> dict:
    art = build_artifacts(workdir)
    query = png(art.queries[0])
    rows = {}
    with _served(source, art.index, art.bundle) as (url, pid):
        _phase(url, pid, query, 3.0)  # warm-up
        rows["idle"] = _phase(url, pid, query, seconds)
        for name, (threads, attack) in _attacks().items():
            if only and not any(part in name for part in only):
                continue
            rows[name] = _phase(url, pid, query, seconds, threads, attack)
            print(f"{name}: {rows[name]}", flush=True)
    return {"seconds": seconds, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="after", help="Key of this run in the results file.")
    parser.add_argument("--source", type=Path, default=ROOT, help="Source tree whose server to measure.")
    parser.add_argument("--seconds", type=float, default=8.0, help="Duration of each attack.")
    parser.add_argument("--only", action="append", help="Run only the attacks whose name contains this (repeatable).")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))  # the 2,000-socket flood, both ends
    with tempfile.TemporaryDirectory(prefix="abuse-bench-") as workdir:
        result = run(args.source.resolve(), args.seconds, Path(workdir), args.only)
    result["cpus"] = len(os.sched_getaffinity(0))
    print(f"{'attack':<40}{'answers':<34}{'ok':>5}{'not':>5}{'p50':>8}{'p99':>8}{'readyz':>8}{'rss MB':>12}")
    for name, r in result["rows"].items():
        answers = ", ".join(r["attack_answers"])[:32]
        print(f"{name:<40}{answers:<34}{r['ok']:>5}{r['not_ok']:>5}{r['p50_ms']:>8}{r['p99_ms']:>8}"
              f"{r['readyz_max_ms']:>8}{r['rss_before_mb']:>6}>{r['rss_after_mb']:<5}")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[args.label] = result
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
