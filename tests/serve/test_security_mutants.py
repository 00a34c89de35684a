"""serve.security on a small app of its own: which key answer a client gets, that guards run before the body is read,
and what OpenAPI says about the key headers (each test pins a behaviour a mutant of serve/security.py broke unseen)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, SecretStr

from serve.errors import ServiceError, install_error_handlers
from serve.security import GuardedRoute, admin_key, api_key, guard, probe_enabled, raw_header

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
