"""The guarded routes on the running service: keys (401/403), the probe switch (404) and slots (429), confined reload
paths, and request ids in responses and log lines; and serve.security on a small app of its own: which key answer a
client gets, that guards run before the body is read, and what OpenAPI says about the key headers."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, SecretStr

from serve.app import create_app
from serve.errors import ServiceError, install_error_handlers
from serve.log import RequestIdFilter
from serve.security import GuardedRoute, admin_key, api_key, guard, probe_enabled, raw_header
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


API, ADMIN = "api-Key-1", "admin-Key-2"


class Payload(BaseModel):
    steps: int


def _app(*, enable_probe=True, api=API, admin=ADMIN, probe_without_key=False) -> TestClient:
    settings = SimpleNamespace(enable_probe=enable_probe, api_key=SecretStr(api) if api else None,
                               admin_key=SecretStr(admin) if admin else None, probe_without_key=probe_without_key)
    app = FastAPI()
    app.state.service = SimpleNamespace(settings=settings)
    install_error_handlers(app)
    router = APIRouter(route_class=GuardedRoute)

    @router.post("/probe", dependencies=[Depends(probe_enabled), Depends(api_key)])
    def probe(payload: Payload) -> dict:
        return {"steps": payload.steps}

    @router.post("/admin", dependencies=[Depends(admin_key)])
    def admin() -> dict:
        return {"ok": True}

    @router.post("/open")
    def open_route(payload: Payload) -> dict:
        return {"steps": payload.steps}

    app.include_router(router)
    return TestClient(app)


def _error(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_the_right_key_passes_and_the_body_is_then_parsed():
    client = _app()
    assert client.post("/probe", json={"steps": 3}, headers={"X-API-Key": API}).json() == {"steps": 3}
    assert _error(client.post("/probe", json={"steps": "x"}, headers={"X-API-Key": API})) == (422, "invalid_request")
    assert client.post("/admin", headers={"X-Admin-Key": ADMIN}).json() == {"ok": True}


@pytest.mark.parametrize("path, header, key", [("/probe", "X-API-Key", API), ("/admin", "X-Admin-Key", ADMIN)])
def test_a_missing_key_is_401_naming_the_header_and_a_wrong_one_403(path, header, key):
    client = _app()
    missing = client.post(path, json={"steps": 1})
    assert _error(missing) == (401, "missing_key")
    assert missing.headers["WWW-Authenticate"] == header
    assert missing.json()["error"]["message"] == f"missing {header} header"
    assert _error(client.post(path, json={"steps": 1}, headers={header: ""})) == (401, "missing_key")
    wrong = client.post(path, json={"steps": 1}, headers={header: key + "x"})
    assert _error(wrong) == (403, "wrong_key") and wrong.json()["error"]["message"] == f"wrong {header}"
    # keys are compared as sent: case matters, and the other route's key is no key here
    assert _error(client.post(path, json={"steps": 1}, headers={header: key.upper()})) == (403, "wrong_key")
    other = {"X-API-Key": ADMIN, "X-Admin-Key": API}[header]
    assert _error(client.post(path, json={"steps": 1}, headers={header: other})) == (403, "wrong_key")


def test_guards_run_before_the_body_is_read():
    client = _app()
    # a body that would fail validation: a client without the key must learn nothing about the form
    assert _error(client.post("/probe", content=b"{not json", headers={"Content-Type": "application/json"})) == (
        401, "missing_key")
    assert _error(client.post("/probe", json={"steps": "x"}, headers={"X-API-Key": "nope"})) == (403, "wrong_key")
    # the probe switch is checked first: a disabled probe is 404 whatever the key
    disabled = _app(enable_probe=False)
    response = disabled.post("/probe", json={"steps": "x"}, headers={"X-API-Key": API})
    assert _error(response) == (404, "probe_disabled")
    assert response.json()["error"]["message"] == "probes are disabled on this server (--enable-probe)"
    # a route without guards behaves as FastAPI's own
    assert client.post("/open", json={"steps": 2}).json() == {"steps": 2}
    assert _error(client.post("/open", json={"steps": "x"})) == (422, "invalid_request")


def test_only_the_first_key_header_counts():
    client = _app()
    assert client.post("/probe", json={"steps": 1}, headers=[("X-API-Key", API), ("X-API-Key", "x")]).status_code == 200
    assert _error(client.post("/probe", json={"steps": 1}, headers=[("X-API-Key", "x"), ("X-API-Key", API)])) == (
        403, "wrong_key")


def test_raw_header_returns_the_bytes_as_sent_whatever_the_name_case():
    scope = {"headers": [(b"x-api-key", b"Caf\xe9"), (b"x-api-key", b"second"), (b"other", b"1")]}
    request = SimpleNamespace(scope=scope)
    assert raw_header(request, "X-API-Key") == b"Caf\xe9"
    assert raw_header(request, "x-api-key") == b"Caf\xe9"
    assert raw_header(request, "X-Admin-Key") is None


def test_without_a_configured_key_admin_is_closed_and_probe_open_only_when_asked():
    closed = _app(admin=None, api=None)
    response = closed.post("/admin", headers={"X-Admin-Key": "anything"})
    assert _error(response) == (403, "key_not_configured")
    assert response.json()["error"]["message"] == "this route is closed: the server has no key for X-Admin-Key"
    assert _error(closed.post("/probe", json={"steps": 1}, headers={"X-API-Key": "x"})) == (403, "key_not_configured")
    open_probe = _app(api=None, admin=None, probe_without_key=True)
    assert open_probe.post("/probe", json={"steps": 1}).json() == {"steps": 1}
    # probe_without_key opens /probe, never /admin
    assert _error(open_probe.post("/admin")) == (403, "key_not_configured")


def test_openapi_declares_each_key_header_as_an_api_key_scheme():
    spec = _app().get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes == {
        "X-API-Key": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        "X-Admin-Key": {"type": "apiKey", "in": "header", "name": "X-Admin-Key"},
    }
    assert spec["paths"]["/probe"]["post"]["security"] == [{"X-API-Key": []}]
    assert spec["paths"]["/admin"]["post"]["security"] == [{"X-Admin-Key": []}]
    assert "security" not in spec["paths"]["/open"]["post"]


def test_a_new_guard_runs_its_check_on_the_request_and_declares_its_header():
    """guard() as a route author uses it (the module's own guards are built at import, before a test can see them)."""
    paths = []

    def team_only(request) -> None:
        paths.append(request.url.path)
        if request.headers.get("X-Team") != "blue":
            raise ServiceError(401, "not_team", "team only")

    app = FastAPI()
    install_error_handlers(app)
    router = APIRouter(route_class=GuardedRoute)

    @router.post("/plain", dependencies=[Depends(guard(team_only))])
    def plain(payload: Payload) -> dict:
        return {"steps": payload.steps}

    @router.post("/keyed", dependencies=[Depends(guard(lambda request: paths.append(request.url.path), "X-Team-Key"))])
    def keyed(payload: Payload) -> dict:
        return {"steps": payload.steps}

    app.include_router(router)
    client = TestClient(app)
    assert _error(client.post("/plain", content=b"{", headers={"Content-Type": "application/json"})) == (
        401, "not_team")
    assert client.post("/plain", json={"steps": 4}, headers={"X-Team": "blue"}).json() == {"steps": 4}
    # the declared header is documentation: a request without it reaches the check, which lets it through here
    assert client.post("/keyed", json={"steps": 5}).json() == {"steps": 5}
    assert set(paths) == {"/plain", "/keyed"}
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"] == {"X-Team-Key": {"type": "apiKey", "in": "header",
                                                                    "name": "X-Team-Key"}}
    assert spec["paths"]["/keyed"]["post"]["security"] == [{"X-Team-Key": []}]
    assert "security" not in spec["paths"]["/plain"]["post"]
