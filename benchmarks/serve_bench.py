"""What the service spends per /search against its in-process floor, and where the rest goes.

floor    decode + onnxruntime embed + FAISS search of one 28x28 PNG in this process: median wall and CPU ms;
         and the decode alone, so "decoder hop" (the decoding processes' CPU per request less that decode) is the
         decoding processes' share of what decoding outside the server's process costs (the server's side of the
         socket is in its own CPU)
HTTP     POST /search (28x28 PNG, top_k 10) through `robust-retrieval serve` (uvicorn, default log level) against
         the 10k Fashion-MNIST gallery, driven by `wrk` (Debian package; one C thread, a fixed body file) at
         concurrency 1, 8 and 32: CPU ms per request of the server process and of the service (the server with its
         decoding processes, which decode every upload; /proc over the run), p50, p99, req/s; each level is run
         --repeats times and the run with the median service CPU per request is reported
profile  with --profile: py-spy samples the server under load (c=8); its CPU time is split into the floor's calls
         and the rest, and the five largest costs above the floor are listed in ms per request
probe    POST /probe, GTT with 32 steps, sequential: at eps 1/255 (the attack alone: the top-1 holds) and at the
         default eps (the tests' undefended model flips, so the smallest-flip search runs too), p50 and max

Targets: service CPU per request <= 1.5 x floor CPU + 0.3 ms; at c=1 <= floor CPU + 0.3 ms; with --baseline, c=8
and c=32 not above the baseline's; p99 at c=32 <= 10 x p50 at c=1; the probe's attack p50 <= 1 s, with the
smallest-flip search p50 <= 3 s.
Cores: with two or more available, the server (and the floor) get the first core to themselves and wrk and py-spy run
on the others, so CPU per request is the server's own work, not the cache and scheduling cost of sharing a core with
its client; latency and req/s are those of a one-core server. With one core (or --shared-core) all share it.
Usage: python -m benchmarks.serve_bench [--seconds 10] [--bodies multipart,raw] [--profile] [--shared-core]
                                       [--baseline CHECKOUT_OF_ANOTHER_REVISION]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from rich.console import Console
from rich.table import Table
from benchmarks.serve_harness import API_KEY, ROOT, cpu_seconds, fashion_10k, png, served, tree_cpu_seconds

from retrieval.atomic import atomic_write_json
from retrieval.images import decode_array
from serve.engine import load_engine
from serve.settings import Settings
from serve.uploads import max_pixels

PROFILE_CONCURRENCY = 8
BOUNDARY = "rrbenchboundary"
FLOOR_FRAMES = {
    ("decode_image", "retrieval/images.py"),
    ("OnnxEmbedder.embed", "retrieval/gallery/embedder.py"),
    ("GalleryIndex.search", "retrieval/gallery/index.py"),
    ("GalleryIndex.rows", "retrieval/gallery/index.py"),
}
"""The calls the floor makes; a profile sample inside any of them is floor work, wherever it was called from."""

WRK_SCRIPT = """
local f = assert(io.open(BODY_PATH, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = CONTENT_TYPE
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) server_errors = 0 end
function response(status, headers, body) if status >= 500 then server_errors = server_errors + 1 end end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("server_errors") end
  io.write(string.format("server_errors %d\\n", total))
end
"""


def floor_ms(art, image: bytes, n: int) -> tuple[float, float, float]:
    """Median wall ms and mean CPU ms of decode + embed + search, single-threaded like the server's work, and the
    mean CPU ms of the decode alone (what the decoding processes would spend if the hop to them were free)."""
    engine = load_engine(art.index, art.bundle, threads=1, with_torch=False)
    cap = max_pixels(Settings(index=art.index, bundle=art.bundle), engine.bundle)

    def decode():
        return decode_array(image, size=engine.bundle.input_size, channels=engine.bundle.channels, max_pixels=cap,
                            deadline=time.monotonic() + 2)[0]

    def query() -> None:
        engine.search(engine.embed(torch.from_numpy(decode())[None])[0], 10)

    for _ in range(20):
        query()
    times = []
    cpu_start = time.process_time()
    for _ in range(n):
        start = time.perf_counter()
        query()
        times.append(time.perf_counter() - start)
    cpu = (time.process_time() - cpu_start) * 1000 / n
    decode_start = time.process_time()
    for _ in range(n):
        decode()
    return statistics.median(times) * 1000, cpu, (time.process_time() - decode_start) * 1000 / n


def bodies(image: bytes, workdir: Path, kinds: list[str]) -> dict[str, tuple[Path, str]]:
    """Request body files and their content types: one multipart part, or the raw PNG."""
    multipart = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.png\"\r\n"
                 f"Content-Type: image/png\r\n\r\n").encode() + image + (
                 f"\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"top_k\"\r\n\r\n10\r\n"
                 f"--{BOUNDARY}--\r\n").encode()
    made = {"multipart": (multipart, f"multipart/form-data; boundary={BOUNDARY}"), "raw": (image, "image/png")}
    out = {}
    for kind in kinds:
        body, content_type = made[kind]
        path = workdir / f"body-{kind}"
        path.write_bytes(body)
        out[kind] = (path, content_type)
    return out


def wrk(url: str, body: Path, content_type: str, concurrency: int, seconds: float, pid: int) -> dict:
    """One wrk run; the server's CPU seconds are read around it."""
    script = body.with_suffix(".lua")
    script.write_text(f"BODY_PATH = {json.dumps(str(body))}\nCONTENT_TYPE = {json.dumps(content_type)}\n{WRK_SCRIPT}")
    query = "" if content_type.startswith("multipart") else "?top_k=10"
    cpu_before, tree_before = cpu_seconds(pid), tree_cpu_seconds(pid)
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "--timeout", "30s",
                          "-s", str(script), f"{url}/search{query}"], capture_output=True, text=True, check=True).stdout
    cpu, tree = cpu_seconds(pid) - cpu_before, tree_cpu_seconds(pid) - tree_before
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": requests,
        "server_cpu_ms_per_request": round(cpu * 1000 / requests, 3),
        "service_cpu_ms_per_request": round(tree * 1000 / requests, 3),
        "p50_ms": _duration_ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1)),
        "p99_ms": _duration_ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1)),
        "throughput_rps": float(re.search(r"Requests/sec:\s+(\S+)", out).group(1)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "server_errors": int(re.search(r"server_errors (\d+)", out).group(1)),
    }


def measure(servers: dict, runs: dict, levels: list[str], repeats: int, seconds: float) -> dict:
    """{server: {body: {level: median run}}}; at each level the servers take turns, so a drift of the machine's speed
    hits all of them alike."""
    http = {name: {kind: {} for kind in runs} for name in servers}
    for kind, (path, content_type) in runs.items():
        for c in levels:
            measured = {name: [] for name in servers}
            for _ in range(repeats):
                for name, (url, proc) in servers.items():
                    if measured[name] and measured[name][0]["non_2xx"] == measured[name][0]["requests"]:
                        continue  # a body this revision refuses (a baseline may predate raw bodies)
                    measured[name].append(wrk(url, path, content_type, int(c), seconds, proc.pid))
            for name in servers:
                http[name][kind][c] = median_run(measured[name])
    return http


def median_run(runs: list[dict]) -> dict:
    """The run with the median service CPU per request (this machine's speed drifts by up to 25% between runs), with
    every run's CPU figures kept beside it."""
    cpu = [r["service_cpu_ms_per_request"] for r in runs]
    median = sorted(range(len(runs)), key=cpu.__getitem__)[(len(runs) - 1) // 2]
    return runs[median] | {"cpu_ms_per_request_runs": [r["server_cpu_ms_per_request"] for r in runs],
                           "service_cpu_ms_per_request_runs": cpu}


def measure_probes(servers: dict, image: bytes, repeats: int) -> dict:
    """{server: {case: summary}} of sequential GTT 32-step probes, the servers taking turns request by request:
    `attack` at eps 1/255 (the top-1 holds, so no smallest-flip search runs) and `with flip search` at the default
    eps (the tests' undefended model flips, so the bisection runs after the attack)."""
    cases = {"attack": {"eps": str(1 / 255)}, "with flip search": {}}
    seen = {name: {case: [] for case in cases} for name in servers}
    with contextlib.ExitStack() as stack:
        clients = {name: stack.enter_context(httpx.Client(base_url=url, timeout=60))
                   for name, (url, _) in servers.items()}
        for _ in range(repeats):
            for case, fields in cases.items():
                for name, client in clients.items():
                    start = time.perf_counter()
                    answer = client.post("/probe", files={"image": ("q.png", image, "image/png")},
                                         data={"attack": "GTT", "steps": "32", **fields},
                                         headers={"X-API-Key": API_KEY})
                    seconds = time.perf_counter() - start
                    answer.raise_for_status()
                    seen[name][case].append((seconds, answer.json()))
    return {name: {case: _probe_summary(runs) for case, runs in by_case.items()} for name, by_case in seen.items()}


def _probe_summary(runs: list[tuple[float, dict]]) -> dict:
    ms = sorted(seconds * 1000 for seconds, _ in runs)
    answers = [answer for _, answer in runs]
    return {"requests": len(ms), "p50_ms": round(statistics.median(ms), 1), "max_ms": round(ms[-1], 1),
            "top1_changed": sum(a["top1_changed"] for a in answers),
            "flip_trials": sorted({a["flip"]["trials"] for a in answers}),
            "min_flip_eps_255": sorted({round(a["flip"]["min_flip_eps"] * 255) for a in answers
                                        if a["flip"]["min_flip_eps"] is not None})}


def _duration_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return round(float(value) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit], 3)


def profile(url: str, body: Path, content_type: str, seconds: float, pid: int, raw: Path) -> dict:
    """Where the server's CPU above the floor goes, from py-spy samples under load (c=8).

    py-spy runs with --gil: a sample is taken only from the thread holding the GIL, so threads waiting on a queue or
    on epoll (which py-spy's idle check misses on a busy core) never count, and onnxruntime and FAISS, which run
    without the GIL, are the floor anyway. Samples inside the floor's calls are dropped; the rest share the measured
    excess (service CPU per request minus floor CPU) in proportion, keyed by the innermost frame.
    """
    spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
                            "--pid", str(pid), "--rate", "250", "--format", "raw", "--gil", "--duration",
                            str(int(seconds)), "--nonblocking", "-o", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    load = wrk(url, body, content_type, PROFILE_CONCURRENCY, seconds - 2, pid)
    spy.wait(seconds + 60)
    costs = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_frame(f) for f in stack.split(";")]
        if not any(f[0] in FLOOR_FRAMES for f in frames):
            costs[frames[-1][1]] += int(count)
    total = max(1, sum(costs.values()))
    return {"concurrency": PROFILE_CONCURRENCY, "cpu_ms_per_request": load["service_cpu_ms_per_request"],
            "samples_above_floor": total,
            "top_above_floor": [{"where": where, "share": round(n / total, 3)} for where, n in costs.most_common(5)]}


def _frame(text: str) -> tuple[tuple[str, str], str]:
    """('function (path:line)') -> ((function, path relative to the project or site-packages), module key)."""
    match = re.fullmatch(r"(.*) \((.*?)(?::\d+)?\)", text)
    function, path = (match.group(1), match.group(2)) if match else (text, "?")
    for marker in ("site-packages/", "/work/main/", str(ROOT) + "/", "/lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    path = re.sub(r"^\d+/", "", path)  # stdlib: drop the python minor version left after the marker
    return (function, path), f"{path}:{function}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="wrk duration per concurrency level")
    parser.add_argument("--concurrency", default="1,8,32", help="wrk connections, one run each")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per level; the one with the median server CPU per request is kept")
    parser.add_argument("--bodies", default="multipart,raw", help="request bodies to run: multipart, raw")
    parser.add_argument("--profile", action="store_true", help="also profile the server with py-spy")
    parser.add_argument("--profile-out", type=Path, default=ROOT / "benchmarks" / "out" / "serve_profile.txt",
                        help="py-spy's collapsed stacks (input for a flame graph)")
    parser.add_argument("--probes", type=int, default=5)
    parser.add_argument("--shared-core", action="store_true", help="server, wrk and py-spy on one core")
    parser.add_argument("--baseline", type=Path, help="a checkout of another revision (git worktree add DIR REV): "
                                                       "its service is measured too, taking turns with this one")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_bench.json")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("error: wrk is not installed (apt-get install wrk)")
    args.profile_out.parent.mkdir(parents=True, exist_ok=True)
    cores = sorted(os.sched_getaffinity(0))
    server_cores = set(cores[:1])
    client_cores = server_cores if args.shared_core or len(cores) == 1 else set(cores[1:])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        art = fashion_10k(workdir)
        image = png(art.queries[0])
        os.sched_setaffinity(0, server_cores)
        floor = floor_ms(art, image, 2000)
        os.sched_setaffinity(0, client_cores)  # wrk and py-spy inherit it
        roots = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
        with contextlib.ExitStack() as stack:
            servers = {name: stack.enter_context(served(art, log_level="info", log_file=workdir / f"{name}.log",
                                                        cpus=server_cores, root=root))
                       for name, root in roots.items()}
            runs = bodies(image, workdir, args.bodies.split(","))
            for url, proc in servers.values():
                for path, content_type in runs.values():
                    wrk(url, path, content_type, 8, 2, proc.pid)  # warm connections, threads and caches
            http = measure(servers, runs, args.concurrency.split(","), args.repeats, args.seconds)
            first = next(iter(runs.values()))
            stacks = {name: args.profile_out.with_stem(f"{args.profile_out.stem}_{name}") for name in servers}
            stacks["this"] = args.profile_out
            profiled = {name: profile(url, *first, args.seconds + 4, proc.pid, stacks[name])
                        for name, (url, proc) in servers.items()} if args.profile else {}
            probes = measure_probes(servers, image, args.probes)
        os.sched_setaffinity(0, server_cores)
        again = floor_ms(art, image, 2000)
        floor_wall, floor_cpu, decode_cpu = map(min, floor, again)  # the machine's load drifts: keep the lower
    placement = {"server_cores": sorted(server_cores), "client_cores": sorted(client_cores)}
    baseline = {"root": str(roots["baseline"]), "revision": _revision(roots["baseline"]),
                "search": http["baseline"], "profile": profiled.get("baseline"),
                "probe_gtt_32": probes["baseline"]} if args.baseline else None
    report(floor_wall, floor_cpu, decode_cpu, http["this"], profiled.get("this"), probes["this"], placement, baseline,
           args.out)


def _revision(root: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def report(floor_wall: float, floor_cpu: float, decode_cpu: float, http: dict, profiled: dict | None, probes: dict,
           placement: dict, baseline: dict | None, out: Path) -> None:
    cpu_target = 1.5 * floor_cpu + 0.3
    targets = {}
    shared = placement["server_cores"] == placement["client_cores"]
    table = Table(title=f"serve_bench: floor {floor_wall:.3f} ms wall, {floor_cpu:.3f} ms CPU; server on core(s) "
                        f"{placement['server_cores']}, wrk on {'the same' if shared else placement['client_cores']}")
    for column in ("server", "body", "c", "requests", "server CPU ms/req", "+ decoders", "- floor", "x floor",
                   "decoder hop", "p50 ms", "p99 ms", "req/s", "non-2xx", "5xx"):
        table.add_column(column)
    measured = {"this": http} | ({f"baseline {baseline['revision']}": baseline["search"]} if baseline else {})
    for name, results in measured.items():
        for kind, levels in results.items():
            for c, r in levels.items():
                cpu = r["service_cpu_ms_per_request"]
                table.add_row(name, kind, c, str(r["requests"]), f"{r['server_cpu_ms_per_request']:.3f}",
                              f"{cpu:.3f}", f"{cpu - floor_cpu:.3f}", f"{cpu / floor_cpu:.2f}",
                              f"{cpu - r['server_cpu_ms_per_request'] - decode_cpu:.3f}", f"{r['p50_ms']:.2f}",
                              f"{r['p99_ms']:.2f}", f"{r['throughput_rps']:.0f}",
                              str(r["non_2xx"]), str(r["server_errors"]))
    for kind, levels in http.items():  # the targets are this revision's
        cpu = {c: r["service_cpu_ms_per_request"] for c, r in levels.items()}
        targets[f"{kind}: service CPU/request <= 1.5 x floor CPU + 0.3 ms ({cpu_target:.3f})"] = \
            max(cpu.values()) <= cpu_target
        if "1" in cpu:
            targets[f"{kind}: c=1 service CPU/request - floor CPU <= 0.3 ms"] = cpu["1"] - floor_cpu <= 0.3
        if "1" in levels and "32" in levels:
            targets[f"{kind}: p99 c=32 <= 10 x p50 c=1"] = levels["32"]["p99_ms"] <= 10 * levels["1"]["p50_ms"]
        for c in ("8", "32"):
            before = baseline and baseline["search"].get(kind, {}).get(c)
            if c in cpu and before and before["non_2xx"] < before["requests"]:
                targets[f"{kind}: c={c} service CPU/request not above the baseline's "
                        f"({before['service_cpu_ms_per_request']:.3f})"] = \
                    cpu[c] <= before["service_cpu_ms_per_request"]
    targets["probe GTT 32 steps (the attack) p50 <= 1000 ms"] = probes["attack"]["p50_ms"] <= 1000
    targets["probe GTT 32 steps with the smallest-flip search p50 <= 3000 ms"] = \
        probes["with flip search"]["p50_ms"] <= 3000
    console = Console(width=160)
    console.print(table)
    probe_table = Table(title="/probe GTT 32 steps, sequential, servers taking turns")
    for column in ("server", "case", "requests", "p50 ms", "max ms", "top-1 changed", "flip trials",
                   "min flip eps x255"):
        probe_table.add_column(column)
    probed = {"this": probes} | ({f"baseline {baseline['revision']}": baseline["probe_gtt_32"]} if baseline else {})
    for name, cases in probed.items():
        for case, r in cases.items():
            probe_table.add_row(name, case, str(r["requests"]), f"{r['p50_ms']:.0f}", f"{r['max_ms']:.0f}",
                                str(r["top1_changed"]), str(r["flip_trials"]), str(r["min_flip_eps_255"]))
    console.print(probe_table)
    for name, found in (("this", profiled), ("baseline", baseline and baseline["profile"])):
        if found:
            found["excess_ms_per_request"] = excess = round(max(0.0, found["cpu_ms_per_request"] - floor_cpu), 3)
            for cost in found["top_above_floor"]:
                cost["ms_per_request"] = round(cost["share"] * excess, 3)
            console.print(f"{name}: profile at c={found['concurrency']}: {found['cpu_ms_per_request']:.3f} ms "
                          f"service CPU/request, {excess:.3f} above the floor; its top costs (innermost frame):")
            for cost in found["top_above_floor"]:
                console.print(f"  {cost['ms_per_request']:.3f} ms  {cost['share']:5.1%}  {cost['where']}")
    for target, ok in targets.items():
        console.print(f"{'PASS' if ok else 'MISS'}  {target}")
    atomic_write_json(out, {"floor_ms": round(floor_wall, 3), "floor_cpu_ms": round(floor_cpu, 3),
                            "decode_cpu_ms": round(decode_cpu, 3),
                            **placement, "gallery": 10000, "load_generator": "wrk", "uptime": _uptime(),
                            "search": http, "profile": profiled, "probe_gtt_32": probes, "targets": targets,
                            "baseline": baseline})


def _uptime() -> str:
    """The machine's load averages when the figures were taken (the box may be shared)."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
