"""deploy/: real nginx (deploy/nginx.conf) in front of 2 `serve` replicas of one index folder; `index --append`
publishes a new generation and deploy/reload-replicas.sh switches both replicas while clients search through nginx
at a steady rate: no request fails, and afterwards every replica and every answer is on the new generation."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.artifacts import GALLERY
from tests.support.ports import free_port
from tests.support.service import ADMIN_KEY, png

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 600
CLIENTS, PER_CLIENT_RATE = 4, 10.0
"""40 requests/s in all: under deploy/nginx.conf's 50/s per client address, so nginx's own limit never answers 429."""
RELOAD_WINDOW_S = 2.0
"""A reload takes tens of milliseconds: the first switches both replicas to the new generation, and the script runs
again back to back until this window has passed, so some 80 requests meet a reload whatever the CPU's speed."""


def nginx_config(directory: Path, replicas: list[int], edge: int) -> Path:
    """deploy/nginx.conf with the replicas in its upstream block and listening on `edge`, inside a minimal nginx.conf
    whose files all live in `directory`."""
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    servers = "".join(f"    server 127.0.0.1:{port};\n" for port in replicas)
    assert site.count("    server 127.0.0.1:8000;\n") == 1 and site.count("    listen 80;\n") == 1
    site = site.replace("    server 127.0.0.1:8000;\n", servers).replace("    listen 80;\n", f"    listen 127.0.0.1:{edge};\n")
    (directory / "site.conf").write_text(site)
    temp = " ".join(f"{kind}_temp_path {directory / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root root;" if os.geteuid() == 0 else ""  # workers must reach the temp folders under pytest's 0700 tmp
    main = directory / "nginx.conf"
    main.write_text(f"""{user}
worker_processes 1;
daemon off;
pid {directory / 'nginx.pid'};
error_log {directory / 'error.log'} warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    {temp}
    include {directory / 'site.conf'};
}}
""")
    return main


def start_replica(index: Path, bundle: Path, port: int, log: Path) -> subprocess.Popen:
    env = os.environ | {"RR_ADMIN_KEY": ADMIN_KEY, "RR_THREADS": "1"}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "serve.cli", "serve", str(index), "--bundle", str(bundle),
                                 "--port", str(port), "--threads", "1"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def wait_ready(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        assert process.poll() is None, f"{url} exited with {process.returncode}"
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} not ready within {READY_TIMEOUT_S} s"
        time.sleep(0.3)


def new_images(directory: Path, count: int) -> Path:
    rng = np.random.default_rng(7)
    directory.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(directory / f"new{i}.png")
    return directory


def test_a_reload_of_both_replicas_under_load_through_nginx_fails_no_request(artifacts, tmp_path) -> None:
    nginx = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")  # Debian puts it in sbin
    if nginx is None:
        pytest.skip("nginx is not installed: sudo apt-get install -y nginx")
    index = tmp_path / "indexes" / "fashion"
    shutil.copytree(artifacts.index, index)
    ports, edge = [free_port(), free_port()], free_port()
    replicas = [start_replica(index, artifacts.bundle, port, tmp_path / f"replica{port}.log") for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    proxy = subprocess.Popen([nginx, "-c", str(nginx_config(tmp_path, ports, edge)), "-p", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop, records, lock = threading.Event(), [], threading.Lock()
    image = png(artifacts.queries[0])

    def client() -> None:
        """Search through nginx every 1/PER_CLIENT_RATE s: (start, seconds, status or error, index_id)."""
        with httpx.Client(base_url=f"http://127.0.0.1:{edge}", timeout=60) as http:
            next_at = time.monotonic()
            while not stop.is_set():
                started = time.monotonic()
                try:
                    answer = http.post("/search", files={"image": ("q.png", image, "image/png")})
                    outcome = (answer.status_code, answer.json().get("index_id") if answer.status_code == 200 else None)
                except httpx.HTTPError as exc:
                    outcome = (type(exc).__name__, None)
                with lock:
                    records.append((started, time.monotonic() - started, *outcome))
                next_at += 1 / PER_CLIENT_RATE
                time.sleep(max(0.0, next_at - time.monotonic()))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    try:
        for url, process in zip(urls, replicas):
            wait_ready(url, process)
        old = {httpx.get(f"{url}/info", timeout=10).json()["index"]["id"] for url in urls}
        appended = subprocess.run(
            [sys.executable, "-m", "serve.cli", "index", "--bundle", str(artifacts.bundle), "--images",
             str(new_images(tmp_path / "new", 20)), "-o", str(index), "--append"],
            cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert appended.returncode == 0, appended.stderr[-2000:]
        for thread in threads:
            thread.start()
        time.sleep(3)
        reload_started, reloads = time.monotonic(), []
        while not reloads or time.monotonic() - reload_started < RELOAD_WINDOW_S:
            reloads.append(subprocess.run([str(ROOT / "deploy" / "reload-replicas.sh"), *urls], capture_output=True,
                                          text=True, timeout=600, env=os.environ | {"RR_ADMIN_KEY": ADMIN_KEY}))
        reload_ended = time.monotonic()
        time.sleep(3)
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        for reloaded in reloads:
            assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        new = {httpx.get(f"{url}/info", timeout=10).json()["index"]["id"] for url in urls}
        counts = {httpx.get(f"{url}/info", timeout=10).json()["index"]["count"] for url in urls}
    finally:
        stop.set()
        proxy.terminate()
        for process in replicas:
            process.terminate()
        for process in (proxy, *replicas):
            process.wait(timeout=60)

    assert len(old) == 1 and len(new) == 1 and new != old, (old, new)  # both replicas switched, to the same one
    assert counts == {GALLERY + 20}
    failed = [r for r in records if r[2] != 200]
    assert records and not failed, failed[:5]
    during = [r for r in records if reload_started <= r[0] <= reload_ended]
    after = [r for r in records if r[0] > reload_ended]
    assert during and after and {r[3] for r in after} == new
    latencies = sorted(r[1] * 1000 for r in during)
    summary = {"requests": len(records), "failed": len(failed), "during_reload": len(during),
               "reloads": len(reloads), "reload_s": round(reload_ended - reload_started, 2),
               "during_p50_ms": round(statistics.median(latencies), 1),
               "during_p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1)}
    print("replicas behind nginx:", json.dumps(summary))
