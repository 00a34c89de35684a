"""Issue 8.6 and the guarded routes: keys (401/403), probe switch (404) and slots (429), confined reload paths,
and request ids in responses and log lines."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import logging
import time

import pytest
from fastapi.testclient import TestClient

from serve.app import create_app
from serve.log import RequestIdFilter
from tests.support.service import ADMIN_KEY, API_KEY, png


def _probe(client, artifacts, **headers):
    return client.post("/probe", files={"image": ("q.png", png(artifacts.queries[0]), "image/png")},
                       data={"steps": "2"}, headers=headers)


def _ready(client: TestClient) -> TestClient:
    deadline = time.monotonic() + 60
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return client


@pytest.mark.parametrize("headers, status, code", [
    ({}, 401, "missing_key"),
    ({"X-API-Key": "wrong"}, 403, "wrong_key"),
    ({"X-API-Key": API_KEY}, 200, None),
])
def test_probe_key(client, artifacts, headers, status, code):
    response = _probe(client, artifacts, **headers)
    assert response.status_code == status, response.text
    if code:
        assert response.json()["error"]["code"] == code


@pytest.mark.parametrize("headers, status", [({}, 401), ({"X-Admin-Key": "wrong"}, 403)])
def test_admin_key(client, headers, status):
    assert client.post("/admin/reload", headers=headers).status_code == status


def test_admin_routes_are_closed_without_a_configured_key_and_probe_off_by_default(make_settings, artifacts):
    with TestClient(create_app(make_settings(admin_key=None, enable_probe=False))) as client:
        _ready(client)
        admin = client.post("/admin/reload", headers={"X-Admin-Key": "anything"})
        probe = _probe(client, artifacts, **{"X-API-Key": API_KEY})
    assert admin.status_code == 403 and admin.json()["error"]["code"] == "key_not_configured"
    assert probe.status_code == 404 and probe.json()["error"]["code"] == "probe_disabled"


def test_full_probe_slots_answer_429(client, server, artifacts):
    assert server.state.probe_slots.acquire(blocking=False)
    try:
        response = _probe(client, artifacts, **{"X-API-Key": API_KEY})
    finally:
        server.state.probe_slots.release()
    assert response.status_code == 429 and response.headers["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "probe_busy"


def test_probe_steps_are_bounded(client, artifacts, server):
    response = client.post("/probe", files={"image": ("q.png", png(artifacts.queries[0]), "image/png")},
                           data={"steps": str(server.state.settings.probe_max_steps + 1)},
                           headers={"X-API-Key": API_KEY})
    assert response.status_code == 422 and response.json()["error"]["code"] == "too_many_steps"


def test_probe_time_limit_answers_503(make_settings, artifacts):
    with TestClient(create_app(make_settings(probe_time_limit_s=1e-6))) as client:
        response = _probe(_ready(client), artifacts, **{"X-API-Key": API_KEY})
    assert response.status_code == 503 and response.json()["error"]["code"] == "probe_time_limit"


@pytest.mark.parametrize("path", ["../", "../../etc", "/etc", "fashion/../../bundle"])
def test_reload_path_must_stay_inside_the_index_root(client, path):
    response = client.post("/admin/reload", json={"path": path}, headers={"X-Admin-Key": ADMIN_KEY})
    assert response.status_code == 403 and response.json()["error"]["code"] == "path_not_allowed"


def test_reload_path_symlink_escape_is_refused(client, artifacts):
    link = artifacts.root / "escape"
    link.symlink_to(artifacts.bundle.parent, target_is_directory=True)
    try:
        response = client.post("/admin/reload", json={"path": "escape"}, headers={"X-Admin-Key": ADMIN_KEY})
    finally:
        link.unlink()
    assert response.status_code == 403


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(RequestIdFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def captured_logs(name: str) -> Iterator[list[logging.LogRecord]]:
    """The INFO-and-above records of logger `name` (with request ids) while the block runs."""
    handler = _Records()
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_request_id_is_echoed_generated_and_in_every_log_line(client):
    with captured_logs("serve") as records:
        given = client.get("/livez", headers={"X-Request-ID": "req-123"})
        generated = client.get("/readyz")
        hostile = client.get("/livez", headers={"X-Request-ID": "bad id; with space"})
        reload = client.post("/admin/reload", headers={"X-Admin-Key": ADMIN_KEY, "X-Request-ID": "reload-1"})
    assert given.headers["X-Request-ID"] == "req-123"
    assert len(generated.headers["X-Request-ID"]) == 32
    assert hostile.headers["X-Request-ID"] != "bad id; with space"
    assert reload.status_code == 200
    lines = [(r.getMessage(), r.request_id) for r in records]  # two /livez lines may read alike
    assert any(rid == "req-123" and "/livez" in msg for msg, rid in lines)
    assert any(rid == "reload-1" and msg.startswith("reloaded index") for msg, rid in lines)
    assert all(r.request_id != "-" for r in records)
