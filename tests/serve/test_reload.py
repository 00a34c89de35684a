"""Issue 8.5: POST /admin/reload swaps the index atomically under load: no failed request, new index afterwards."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from serve.app import create_app
from tests.support.artifacts import write_index
from tests.support.service import ADMIN_KEY, LiveServer, png


@pytest.fixture(scope="module")
def second_index(artifacts):
    """Another gallery (test images 3000-3499) for the same model, inside the index root."""
    from retrieval.datasets import load_dataset

    test = load_dataset("fashion-mnist", "test")
    out = artifacts.root / "second"
    write_index(artifacts.bundle, test.tensors()[3000:3500], test.labels[3000:3500], out,
                [test.source(i) for i in range(3000, 3500)])
    return out


def _wait_for(condition, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.01)


@pytest.mark.slow
def test_reload_under_load_fails_no_request(make_settings, artifacts, second_index):
    image = png(artifacts.queries[0])
    statuses, index_ids, stop = [], [], threading.Event()

    def hammer(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                response = c.post("/search", files={"image": ("q.png", image, "image/png")}, data={"top_k": "3"})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    index_ids.append(response.json()["index_id"])

    with LiveServer(create_app(make_settings())) as live:
        live.wait_ready()
        old = httpx.get(f"{live.url}/info").json()["index"]
        threads = [threading.Thread(target=hammer, args=(live.url,)) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            _wait_for(lambda: len(statuses) >= 20, "20 searches before the reload")
            reload = httpx.post(f"{live.url}/admin/reload", json={"path": "second"},
                                headers={"X-Admin-Key": ADMIN_KEY}, timeout=60)
            seen = len(statuses)
            _wait_for(lambda: len(statuses) >= seen + 20, "20 searches after the reload")
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not any(t.is_alive() for t in threads), "a search client hung"
        new = httpx.get(f"{live.url}/info").json()["index"]
        broken = httpx.post(f"{live.url}/admin/reload", json={"path": "missing"}, headers={"X-Admin-Key": ADMIN_KEY})
        still = httpx.get(f"{live.url}/info").json()["index"]
    assert reload.status_code == 200, reload.text
    assert set(statuses) == {200}
    assert reload.json() == {"previous_index_id": old["id"], "index_id": new["id"], "count": 500}
    assert new["count"] == 500 and new["id"] != old["id"]
    assert index_ids[0] == old["id"] and index_ids[-1] == new["id"]
    assert broken.status_code == 422 and still == new
