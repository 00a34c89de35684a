"""Issue 12: keys and switches run before the body is read, keys are compared as exact bytes, start-up refuses keys
that could never match or would open /probe silently, and the body caps (Content-Length, per file) hold."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from pydantic import ValidationError

from serve.app import create_app
from serve.settings import Settings
from test_hostile import TIMEOUT_S, _exchange, _status_and_code
from tests.support.service import ADMIN_KEY, API_KEY, LiveServer, png

NEAR_MISSES = {"prefix": API_KEY[:-1], "suffix": API_KEY + "x", "other case": API_KEY.upper(), "empty": ""}


@pytest.mark.parametrize("name", NEAR_MISSES)
def test_a_near_miss_key_is_refused(client, artifacts, name):
    given = NEAR_MISSES[name]
    probe = client.post("/probe", files={"image": ("q.png", png(artifacts.queries[0]), "image/png")},
                        data={"steps": "2"}, headers={"X-API-Key": given})
    admin = client.post("/admin/reload", headers={"X-Admin-Key": given.replace(API_KEY[:4], ADMIN_KEY[:4])})
    expected = (401, "missing_key") if name == "empty" else (403, "wrong_key")
    assert (probe.status_code, probe.json()["error"]["code"]) == expected
    assert (admin.status_code, admin.json()["error"]["code"]) == expected


def test_key_bytes_are_compared_not_latin1_text(client, artifacts):
    """UTF-8 bytes whose latin-1 reading differs from the key must not match by accident of decoding."""
    response = client.post("/probe", files={"image": ("q.png", png(artifacts.queries[0]), "image/png")},
                           headers={"X-API-Key": (API_KEY + "é").encode()})
    assert response.status_code == 403


def test_keys_are_checked_before_the_form_is_parsed(client):
    no_image = client.post("/probe", data={"steps": "oops"})
    bad_json = client.post("/admin/reload", content=b"{not json", headers={"Content-Type": "application/json"})
    assert (no_image.status_code, no_image.json()["error"]["code"]) == (401, "missing_key")
    assert (bad_json.status_code, bad_json.json()["error"]["code"]) == (401, "missing_key")


def test_keys_are_checked_before_the_body_is_received(server):
    """Only the first KiB of a 9 MB upload is sent: the 401 must come without the rest."""
    head = (b"POST /probe HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 9000000\r\n\r\n")
    body = b'--b\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n\r\n' + b"\0" * 1024
    assert _status_and_code(_exchange(server.url, head, body)) == (401, "missing_key")


def test_content_length_is_refused_before_the_body_is_received(server):
    head = (b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 52428800\r\n\r\n")
    assert _status_and_code(_exchange(server.url, head, b"--b\r\n")) == (413, "request_too_large")


def test_each_file_is_capped_below_the_body_limit(make_settings, artifacts):
    """A 2,000-byte file cap: a 30 kB PNG fits the request body limit (cap + multipart overhead) but not the cap."""
    import numpy as np
    from PIL import Image

    noise = png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 150), dtype=np.uint8)))
    settings = make_settings(max_upload_bytes=2000)
    with LiveServer(create_app(settings), settings) as live:
        live.wait_ready()
        single = httpx.post(f"{live.url}/search", files={"image": ("n.png", noise, "image/png")}, timeout=TIMEOUT_S)
        small = httpx.post(f"{live.url}/search", files={"image": ("q.png", png(artifacts.queries[0]), "image/png")},
                           timeout=TIMEOUT_S)
    assert len(noise) > 20_000
    assert (single.status_code, single.json()["error"]["code"]) == (413, "image_too_large")
    assert small.status_code == 200


@pytest.mark.parametrize("overrides, message", [
    ({"api_key": ""}, "printable ASCII"),
    ({"admin_key": "schlüssel"}, "printable ASCII"),
    ({"api_key": " padded "}, "printable ASCII"),
    ({"api_key": None, "enable_probe": True}, "--probe-without-key"),
    ({"probe_without_key": True}, "contradicts"),
])
def test_settings_refuse_keys_that_cannot_work(make_settings, overrides, message):
    with pytest.raises(ValidationError, match=message):
        make_settings(**overrides)


def test_probe_is_open_only_with_an_explicit_switch(make_settings, artifacts):
    settings = make_settings(api_key=None, probe_without_key=True)
    with LiveServer(create_app(settings), settings) as live:
        live.wait_ready()
        response = httpx.post(f"{live.url}/probe", files={"image": ("q.png", png(artifacts.queries[0]), "image/png")},
                              data={"steps": "2"}, timeout=60)
    assert response.status_code == 200, response.text


def test_the_serve_command_refuses_an_empty_key_in_one_line(artifacts, monkeypatch):
    monkeypatch.setenv("RR_PROBE_WITHOUT_KEY", "false")
    result = subprocess.run([sys.executable, "-m", "serve.cli", "serve", str(artifacts.index), "--enable-probe",
                             "--api-key", ""], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: invalid serve settings: api_key") and result.stderr.count("\n") == 1


def test_settings_from_the_environment_open_probe_explicitly(artifacts, monkeypatch):
    monkeypatch.setenv("RR_PROBE_WITHOUT_KEY", "1")
    assert Settings(index=artifacts.index, enable_probe=True).probe_without_key
