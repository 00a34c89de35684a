"""Issue 12: the service under hostile clients. Decode bombs built here (tests/support/bombs.py, nothing committed),
transport abuse over raw sockets, log injection and hostile index directories; after each, /readyz and an ordinary
/search still answer. Every wait has a deadline (client and socket timeouts), none asserts a speed."""

from __future__ import annotations

import io
import json
import shutil
import socket
import threading
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from retrieval.models.bundle import sha256_file
from serve.app import create_app
from test_security import captured_logs
from test_uploads import _png_header_only
from tests.support import bombs
from tests.support.service import ADMIN_KEY, API_KEY, LiveServer, png

TIMEOUT_S = 20
"""Client deadline of every request here; each bomb cost the old decoder from seconds to minutes."""


@pytest.fixture(scope="module")
def hardened(make_settings):
    """A server with the project's transport limits, short enough to observe."""
    settings = make_settings(header_timeout_s=2, body_timeout_s=2, max_connections=6)
    with LiveServer(create_app(settings), settings) as live:
        live.wait_ready()
        yield live


@pytest.fixture()
def http(hardened):
    with httpx.Client(base_url=hardened.url, timeout=TIMEOUT_S, headers={"X-API-Key": API_KEY}) as client:
        yield client


def _still_serving(client: httpx.Client, query: bytes) -> None:
    assert client.get("/readyz").status_code == 200
    response = client.post("/search", files={"image": ("q.png", query, "image/png")}, data={"top_k": "3"})
    assert response.status_code == 200, response.text


BOMBS = {
    # within the pixel cap (2048x2048 for a 28x28 model), expensive for another reason
    "jpeg with 1000 scans": (lambda: bombs.progressive_jpeg_bomb(2048, 1000), 413, "image_too_complex"),
    "rle bmp 2048x2048": (lambda: bombs.rle_bmp_bomb(2048, 2048), 413, "image_too_complex"),
    "webp canvas 2048x2048 around 1x1": (lambda: bombs.animated_webp_canvas_bomb(2048, 1), 413, "image_too_complex"),
    "gif canvas 2048x2048 around 1x1": (lambda: bombs.gif_canvas_bomb(2048, 1), 413, "image_too_complex"),
    # under the old fixed 16.7 MP cap, over the one sized from the model's input
    "png 2100x2100": (lambda: _png_header_only(2100, 2100), 413, "image_too_large"),
    "webp canvas 4096x4096": (lambda: bombs.animated_webp_canvas_bomb(4096, 1), 413, "image_too_large"),
}


@pytest.mark.parametrize("name", BOMBS)
@pytest.mark.parametrize("route", ["/search", "/search/batch", "/probe"])
def test_decode_bombs_are_refused_before_decoding(http, artifacts, name, route):
    make, status, code = BOMBS[name]
    data = make()
    field = "images" if route == "/search/batch" else "image"
    copies = 32 if route == "/search/batch" else 1
    files = [(field, (f"{i}.bin", data, "application/octet-stream")) for i in range(copies)]
    response = http.post(route, files=files, data={"steps": "2"})
    assert response.status_code == status, (name, response.text)
    assert response.json()["error"]["code"] == code
    _still_serving(http, png(artifacts.queries[0]))


def test_ordinary_search_keeps_answering_while_two_clients_send_bombs(hardened, http, artifacts):
    stop, statuses = threading.Event(), []
    jpeg = bombs.progressive_jpeg_bomb(2048, 1000)

    def attacker() -> None:
        with httpx.Client(base_url=hardened.url, timeout=TIMEOUT_S) as client:
            while not stop.is_set():
                statuses.append(client.post("/search", files={"image": ("b.jpg", jpeg, "image/jpeg")}).status_code)

    threads = [threading.Thread(target=attacker) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(20):
            _still_serving(http, png(artifacts.queries[0]))
    finally:
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT_S)
    assert statuses and set(statuses) == {413}


def test_decode_has_a_wall_clock_limit(make_settings):
    noise = np.random.default_rng(0).integers(0, 256, (2000, 2000), dtype=np.uint8)
    settings = make_settings(decode_time_limit_s=0.001)
    with LiveServer(create_app(settings), settings) as live:
        live.wait_ready()
        response = httpx.post(f"{live.url}/search", files={"image": ("big.png", png(Image.fromarray(noise)),
                                                                     "image/png")}, timeout=TIMEOUT_S)
    assert response.status_code == 422 and response.json()["error"]["code"] == "decode_time_limit"


def test_probe_deadline_covers_decoding(make_settings, artifacts, monkeypatch):
    """A probe whose time is used up by decoding never starts its attack (and never holds the slot for it)."""
    import serve.routes.probe as probe_route

    attacked = []
    monkeypatch.setattr(probe_route, "run_probe", lambda *args: attacked.append(args))
    noise = np.random.default_rng(0).integers(0, 256, (2000, 2000), dtype=np.uint8)
    settings = make_settings(probe_time_limit_s=0.001)
    with LiveServer(create_app(settings), settings) as live:
        live.wait_ready()
        response = httpx.post(f"{live.url}/probe", files={"image": ("big.png", png(Image.fromarray(noise)),
                                                                    "image/png")},
                              headers={"X-API-Key": API_KEY}, timeout=TIMEOUT_S)
    assert response.status_code == 503 and response.json()["error"]["code"] == "probe_time_limit"
    assert attacked == []


# Transport limits, over raw sockets.

def _exchange(url: str, *parts: bytes) -> bytes:
    """Send `parts`, then read one response (until the server closes or TIMEOUT_S passes)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as sock:
        try:
            for part in parts:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before the whole request was sent: read what came
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
        except (ConnectionResetError, socket.timeout):
            pass
    return b"".join(chunks)


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _status_and_code(response: bytes) -> tuple[int, str]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head, "no response before the deadline"
    return int(head.split()[1]), json.loads(body)["error"]["code"]


def test_oversized_headers_get_431_and_others_are_served(hardened, http, artifacts):
    request = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * (4 << 20) + b"\r\n\r\n"
    assert _status_and_code(_exchange(hardened.url, request)) == (431, "headers_too_large")
    _still_serving(http, png(artifacts.queries[0]))


def test_a_client_that_stops_inside_its_headers_is_cut_off(hardened, http, artifacts):
    assert _status_and_code(_exchange(hardened.url, b"GET /livez HTTP/1.1\r\nHost: x\r\n")) == (408, "request_timeout")
    _still_serving(http, png(artifacts.queries[0]))


def test_a_client_that_stops_mid_body_is_cut_off(hardened, http, artifacts):
    head = (b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\n\r\n")
    body = b'--b\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n\r\n' + b"\0" * 1000
    assert _status_and_code(_exchange(hardened.url, head, body)) == (408, "request_timeout")
    _still_serving(http, png(artifacts.queries[0]))


@pytest.mark.parametrize("body, content_type", [
    (b"--b\r\n", "multipart/form-data"),  # no boundary
    (b"&".join(b"f%d=1" % i for i in range(1001)), "application/x-www-form-urlencoded"),  # too many fields
    (b'--b\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n' + b"1" * (1 << 20) + b"0\r\n--b--\r\n",
     "multipart/form-data; boundary=b"),  # a field over 1 MiB
])
def test_unparseable_forms_are_400_invalid_multipart(http, body, content_type):
    response = http.post("/search", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_multipart"


# Logs.

def test_a_path_cannot_forge_log_records(http):
    with captured_logs("serve.access") as records:
        http.get("/livez%0A2026-01-01%2000:00:00%20INFO%20[x]%20serve:%20forged%1B[31mred")
    line = next(r.getMessage() for r in records if "forged" in r.getMessage())
    assert "\n" not in line and "\x1b" not in line and "%0A" in line


# Hostile index directories (reload).

def _copy_index(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=False)
    return dest


def _generation(index: Path) -> Path:
    return index / (index / "CURRENT").read_text().strip()


def _rewrite(generation: Path, name: str, write) -> None:
    """Change a file of a generation and its manifest entry, so that only the content is hostile."""
    write(generation / name)
    manifest = json.loads((generation / "manifest.json").read_text())
    manifest["files"][name] = sha256_file(generation / name)
    (generation / "manifest.json").write_text(json.dumps(manifest))


def _edit_manifest(generation: Path, edit) -> None:
    manifest = json.loads((generation / "manifest.json").read_text())
    edit(manifest["files"])
    (generation / "manifest.json").write_text(json.dumps(manifest))


def _metadata(columns: dict):
    def write(path: Path) -> None:
        table = pq.read_table(path)
        for name, make in columns.items():
            table = table.drop_columns([name]) if make is None else table.append_column(name, make(table.num_rows))
        pq.write_table(table, path)
    return write


def _current_is_a_directory(index: Path) -> None:
    (index / "CURRENT").unlink()
    (index / "CURRENT").mkdir()


def _generation_links_outside(index: Path) -> None:
    outside = _copy_index(index, index.parent.parent / f"outside-{index.name}")
    (index / "gen-000099").symlink_to(_generation(outside), target_is_directory=True)
    (index / "CURRENT").write_text("gen-000099\n")


HOSTILE_INDEXES = {
    "CURRENT is a directory": _current_is_a_directory,
    "CURRENT is not UTF-8": lambda index: (index / "CURRENT").write_bytes(b"\xff\xfe\x00gen"),
    "generation symlinked out of the root": _generation_links_outside,
    "manifest names an absolute path": lambda index: _edit_manifest(
        _generation(index), lambda files: files.update({"/etc/hostname": "0" * 64})),
    "manifest names ../": lambda index: _edit_manifest(
        _generation(index), lambda files: files.update({"../CURRENT": sha256_file(index / "CURRENT")})),
    "manifest omits a file": lambda index: _edit_manifest(
        _generation(index), lambda files: files.pop("index_info.json")),
    "metadata without label": lambda index: _rewrite(_generation(index), "metadata.parquet", _metadata({"label": None})),
    "bad search parameter": lambda index: _rewrite(
        _generation(index), "index_info.json",
        lambda path: path.write_text(json.dumps(json.loads(path.read_text()) | {"search_params": {"bogus": 1}}))),
}


def _reload(client: httpx.Client, path: str) -> httpx.Response:
    return client.post("/admin/reload", json={"path": path}, headers={"X-Admin-Key": ADMIN_KEY})


@pytest.mark.parametrize("name", HOSTILE_INDEXES)
def test_hostile_index_directories_are_422(http, artifacts, name):
    index = _copy_index(artifacts.index, artifacts.root / f"hostile-{abs(hash(name))}")
    HOSTILE_INDEXES[name](index)
    response = _reload(http, index.name)
    assert response.status_code == 422, (name, response.text)
    assert response.json()["error"]["code"] == "invalid_index"
    _still_serving(http, png(artifacts.queries[0]))


@pytest.mark.parametrize("path, code", [("fashion/CURRENT", "invalid_index"), ("x" * 300, "invalid_index")])
def test_a_file_or_too_long_name_as_index_path_is_422(http, path, code):
    response = _reload(http, path)
    assert response.status_code == 422 and response.json()["error"]["code"] == code


def test_a_sibling_directory_sharing_the_root_prefix_is_outside(http, artifacts):
    evil = artifacts.root.parent / f"{artifacts.root.name}-evil"
    _copy_index(artifacts.index, evil / "fashion")
    response = _reload(http, f"../{evil.name}/fashion")
    assert response.status_code == 403 and response.json()["error"]["code"] == "path_not_allowed"


def test_only_the_schema_columns_reach_clients(http, artifacts):
    index = _copy_index(artifacts.index, artifacts.root / "extra-column")
    _rewrite(_generation(index), "metadata.parquet", _metadata({"secret": lambda n: pa.array(["s3cr3t"] * n)}))
    try:
        assert _reload(http, index.name).status_code == 200
        hit = http.post("/search", files={"image": ("q.png", png(artifacts.queries[0]), "image/png")}).json()
    finally:
        assert _reload(http, artifacts.index.name).status_code == 200
    assert set(hit["results"][0]["metadata"]) == {"source", "sha256"}


# Hostile bundles (start-up and every consumer go through Bundle.load).

BUNDLE_EDITS = {
    "manifest omits a file": lambda manifest: manifest["files"].pop("weights.safetensors"),
    "its own model hash mismatches": lambda manifest: manifest.update(model_sha256="0" * 64),
    "its own model hash is missing": lambda manifest: manifest.pop("model_sha256"),
    "a name outside the fixed list": lambda manifest: manifest["files"].update({"extra.bin": "0" * 64}),
    "an absolute name": lambda manifest: manifest["files"].update({"/proc/self/pagemap": "0" * 64}),
}


@pytest.mark.parametrize("name", BUNDLE_EDITS)
def test_hostile_bundle_manifests_are_refused(artifacts, tmp_path, name):
    from retrieval.models.bundle import Bundle
    from retrieval.errors import UserError

    bundle = shutil.copytree(artifacts.bundle, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    BUNDLE_EDITS[name](manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="manifest"):
        Bundle.load(bundle)


def test_a_bundle_file_symlinked_out_of_its_directory_is_refused(artifacts, tmp_path):
    from retrieval.models.bundle import Bundle
    from retrieval.errors import UserError

    bundle = shutil.copytree(artifacts.bundle, tmp_path / "bundle")
    outside = tmp_path / "config.json"
    (bundle / "config.json").rename(outside)
    (bundle / "config.json").symlink_to(outside)
    with pytest.raises(UserError, match="resolves outside"):
        Bundle.load(bundle)


def test_the_recorded_bundle_must_lie_in_the_index_root(artifacts, tmp_path):
    from retrieval.errors import UserError
    from serve.engine import _recorded_bundle

    index = shutil.copytree(artifacts.index, tmp_path / "root" / "index")
    _rewrite(_generation(index), "index_info.json", lambda path: path.write_text(
        json.dumps(json.loads(path.read_text()) | {"bundle": str(artifacts.bundle)})))
    with pytest.raises(UserError, match="resolves outside"):
        _recorded_bundle(index)


def test_metrics_show_when_the_cpu_slots_are_saturated(hardened, http):
    limiter = hardened.state.cpu_limiter
    holders = [object() for _ in range(int(limiter.total_tokens))]
    for holder in holders:  # as the decode/embed/search threads would
        limiter.acquire_on_behalf_of_nowait(holder)
    try:
        metrics = http.get("/metrics").text
    finally:
        for holder in holders:
            limiter.release_on_behalf_of(holder)
    values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines() if line.startswith("rr_cpu")}
    assert values["rr_cpu_slots_busy"] == values["rr_cpu_slots"] == limiter.total_tokens
