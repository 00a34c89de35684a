"""`robust-retrieval serve --workers 2` as a real subprocess: it becomes ready while other processes keep the CPU busy,
a reload reaches every worker before it answers, a killed worker is logged with the reason and its replacement
starts on the reloaded index; and the supervisor's health check, which must notice a worker that dies mid-check."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from serve.server import _answers
from serve_helpers import ADMIN_KEY, png
from test_reload import second_index  # noqa: F401  (fixture: a second gallery inside the index root)

READY_TIMEOUT_S = 300
"""Deadline for two workers to load torch, the model and the index on a CPU shared with the busy loops."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"server exited with {proc.returncode} while waiting for {what}"
        try:
            result = predicate()
            if result:
                return result
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_two_workers_start_on_a_busy_cpu_and_reload_together(artifacts, second_index, tmp_path):  # noqa: F811
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    env = os.environ | {"RR_ADMIN_KEY": ADMIN_KEY, "RR_THREADS": "1"}
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "serve.cli", "serve", str(artifacts.index), "--bundle", str(artifacts.bundle),
             "--port", str(port), "--workers", "2"],
            cwd=Path(__file__).resolve().parents[2], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, READY_TIMEOUT_S, "first ready", server)
        pids = set()
        _wait(lambda: pids.add(_info(url)["worker"]) or len(pids) == 2, READY_TIMEOUT_S, "both workers ready", server)
        for process in busy:  # the rest needs no load: stop competing with the workers for the CPU
            process.kill()
        old = _info(url)["index"]["id"]
        reload = httpx.post(f"{url}/admin/reload", json={"path": "second"}, headers={"X-Admin-Key": ADMIN_KEY},
                            timeout=180)
        assert reload.status_code == 200, reload.text
        new = reload.json()["index_id"]
        assert new != old
        image = png(artifacts.queries[0])  # one connection per request, so that both workers take some
        searches = [httpx.post(f"{url}/search", files={"image": ("q.png", image, "image/png")}, timeout=30)
                    for _ in range(200)]
        infos = [_info(url) for _ in range(200)]
        assert [r.status_code for r in searches] == [200] * 200
        assert {r.json()["index_id"] for r in searches} == {new}
        assert {i["index"]["id"] for i in infos} == {new} and {i["serving_seq"] for i in infos} == {1}
        seen = {i["worker"] for i in infos}
        _wait(lambda: seen.add(_checked(_info(url), new)) or seen == pids, 60, "an answer from each worker", server)

        victim = infos[0]["worker"]
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: f"worker {victim} was killed by signal SIGKILL" in log_path.read_text(errors="replace"), 60,
              "the supervisor's log line", server)
        replacement = _wait(lambda: next((i for i in (_info(url) for _ in range(20))
                                          if i["worker"] not in pids), None), READY_TIMEOUT_S,
                            "the replacement worker", server)
        assert replacement["index"]["id"] == new and replacement["serving_seq"] == 1
    finally:
        for process in busy:
            process.kill()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
    assert server.returncode == 0, log_path.read_text(errors="replace")[-3000:]


def _checked(info: dict, index_id: str) -> int:
    assert info["index"]["id"] == index_id, info
    return info["worker"]


def _info(url: str) -> dict:
    response = httpx.get(f"{url}/info", timeout=10)
    response.raise_for_status()
    return response.json()


def _worker(conn, answer: bool) -> None:
    """A stand-in for a uvicorn worker's health thread: answers the first ping, or dies without answering."""
    conn.recv()
    if answer:
        conn.send(True)
        time.sleep(60)
    os._exit(3)


@pytest.mark.parametrize("answer", [True, False], ids=["answers", "dies-mid-check"])
def test_the_health_check_sees_an_answer_or_a_death_without_waiting_out_its_timeout(answer):
    parent, child = multiprocessing.Pipe()  # the supervisor keeps `child` open too, as uvicorn's does: no EOF
    process = multiprocessing.Process(target=_worker, args=(child, answer), daemon=True)
    process.start()
    worker, result = SimpleNamespace(process=process, parent_conn=parent), []
    checker = threading.Thread(target=lambda: result.append(_answers(worker, timeout=3600)), daemon=True)
    try:
        checker.start()
        checker.join(60)  # deadline: a check that waits for the timeout would block for an hour
        assert result == [answer]
    finally:
        process.kill()
        process.join(10)
