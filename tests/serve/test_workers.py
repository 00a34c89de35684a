"""`robust-retrieval serve --workers 2` as a real subprocess: it becomes ready while other processes keep the CPU busy,
a reload reaches every worker before it answers, a killed worker is logged with the reason and its replacement
starts on the reloaded index, 20 reloads under search load reach every worker with no hung request; the supervisor's
health check, which must notice a worker that dies mid-check; and (in process, with a shared run directory) the
acknowledgements that ignore other workers' temporaries, a follower that survives any failure, and /readyz 503 in a
worker whose follower stopped."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import anyio
import httpx
import pytest

from serve.app import create_app
from serve.metrics import Metrics
from serve.server import _answers
from serve.state import ServiceState
from test_security import captured_logs
from test_reload import second_index  # noqa: F401  (fixture: a second gallery inside the index root)
from tests.support.ports import free_port
from tests.support.service import ADMIN_KEY, LiveServer, png

READY_TIMEOUT_S = 300
"""Deadline for two workers to load torch, the model and the index on a CPU shared with the busy loops."""


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
    url, server = _serve(artifacts, tmp_path, "--workers", "2")
    log_path = tmp_path / "serve.log"
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
        _stop(server)
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


def _stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(10)


def _serve(artifacts, tmp_path, *extra: str) -> tuple[str, subprocess.Popen]:
    """`robust-retrieval serve` on a free port, its log in tmp_path/serve.log."""
    port = free_port()
    env = os.environ | {"RR_ADMIN_KEY": ADMIN_KEY, "RR_THREADS": "1"}
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "serve.cli", "serve", str(artifacts.index), "--bundle", str(artifacts.bundle),
         "--port", str(port), *extra], cwd=Path(__file__).resolve().parents[2], env=env, stdout=log,
        stderr=subprocess.STDOUT)
    log.close()
    return f"http://127.0.0.1:{port}", server


@pytest.mark.slow
def test_twenty_reloads_under_load_reach_every_worker_and_hang_no_request(artifacts, second_index, tmp_path):  # noqa: F811
    """Four threads search without pause while 20 reloads alternate between two indexes: each reload answers 200
    only once both workers serve it (serving_seq), and every search answers 200 (one used to wedge a worker)."""
    url, server = _serve(artifacts, tmp_path, "--workers", "2")
    image, stop, statuses = png(artifacts.queries[0]), threading.Event(), []

    def search() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                try:
                    statuses.append(client.post("/search", files={"image": ("q.png", image, "image/png")}).status_code)
                except httpx.HTTPError as exc:
                    statuses.append(type(exc).__name__)

    try:
        pids = set()
        _wait(lambda: pids.add(_info(url)["worker"]) or len(pids) == 2, READY_TIMEOUT_S, "both workers ready", server)
        threads = [threading.Thread(target=search) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            for seq in range(1, 21):
                reload = httpx.post(f"{url}/admin/reload", json={"path": "second" if seq % 2 else "fashion"},
                                    headers={"X-Admin-Key": ADMIN_KEY}, timeout=180)
                assert reload.status_code == 200, (seq, reload.text)
                seen = {}
                _wait(lambda: seen.update({(i := _info(url))["worker"]: i["serving_seq"]}) or len(seen) == 2, 60,
                      "an answer from each worker", server)
                assert set(seen.values()) == {seq}, (seq, seen)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert not any(thread.is_alive() for thread in threads), "a search hung"
        assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    finally:
        _stop(server)


def test_acknowledgements_leave_other_workers_temporaries_alone(make_settings, artifacts, tmp_path):
    """A reload counts the workers that acknowledged it; a temporary file in acks/ is another worker's
    acknowledgement being written (retrieval.atomic), which it will rename: reading or deleting it wedged reloads."""
    state = ServiceState(make_settings(run_dir=tmp_path), Metrics())
    (tmp_path / "acks").mkdir()
    temporary = tmp_path / "acks" / f".{os.getpid() + 1}.k2j4h1.tmp"
    temporary.write_text("0")
    anyio.run(state.publish, artifacts.index)
    assert temporary.exists() and state.serving_seq == 1


@pytest.fixture()
def follower_server(make_settings, tmp_path):
    settings = make_settings(run_dir=tmp_path)
    with LiveServer(create_app(settings), settings) as live:
        live.wait_ready()
        yield live


def test_a_failing_follower_logs_retries_and_never_stops_the_search(follower_server, artifacts, second_index, tmp_path):  # noqa: F811
    url, image = follower_server.url, png(artifacts.queries[0])
    with captured_logs("serve.state") as records, httpx.Client(base_url=url, timeout=30) as client:
        (tmp_path / "serving.json").write_text("{not json")  # any failure, not only a bad index
        _wait_for_log(records, "cannot follow the serving pointer")
        assert client.get("/readyz").status_code == 200
        assert client.post("/search", files={"image": ("q.png", image, "image/png")}).status_code == 200
        (tmp_path / "serving.json").write_text(json.dumps({"seq": 1, "path": str(second_index)}))
        deadline = time.monotonic() + 60
        while client.get("/info").json()["serving_seq"] != 1:  # the retry follows the repaired pointer
            assert time.monotonic() < deadline, "the follower did not recover"
            time.sleep(0.1)


def test_readyz_is_503_in_a_worker_whose_follower_stopped(follower_server):
    task = follower_server.state.tasks["reload follower"]
    assert httpx.get(f"{follower_server.url}/readyz").status_code == 200
    task.get_loop().call_soon_threadsafe(task.cancel)
    deadline = time.monotonic() + 30
    while not task.done():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    response = httpx.get(f"{follower_server.url}/readyz")
    assert response.status_code == 503 and response.json()["error"]["code"] == "task_stopped"
    assert "reload follower" in response.json()["error"]["message"]
    assert httpx.get(f"{follower_server.url}/livez").status_code == 200  # liveness may restart it; not ready


def _wait_for_log(records, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in r.getMessage() for r in records):
        assert time.monotonic() < deadline, f"no log line with {text!r}"
        time.sleep(0.05)
