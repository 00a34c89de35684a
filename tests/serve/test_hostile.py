"""The service under hostile clients. Decode bombs built here (tests/support/bombs.py, nothing committed), transport
abuse over raw sockets, log injection and hostile index directories and bundles; decoding in killable processes, off
the event loop, with one decode budget per request; memory that returns after a flood of refused images; idle sockets
that cannot take the connections; header limits however headers arrive; numbers bounded before conversion; security
headers everywhere. After each attack /readyz and an ordinary /search still answer. Real uvicorn on 127.0.0.1; every
wait has a deadline (client and socket timeouts), and the only timed bound is /readyz within 1 s while decodes run."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import serve.decoding as decoding
from retrieval.images import DecodeTimeLimit
from retrieval.models.bundle import sha256_file
from serve.app import create_app
from serve.decoding import DecodePool
from test_security import captured_logs
from test_uploads import _png_header_only
from tests.support import bombs
from tests.support.service import ADMIN_KEY, API_KEY, LiveServer, png

TIMEOUT_S = 20
"""Client deadline of the bomb, transport and index requests; each bomb cost the old decoder from seconds to minutes."""
SLOW_TIMEOUT_S = 60
"""Client deadline where real decoding processes, floods or many sockets run on a shared CPU."""


def _serving(make_settings, **limits):
    settings = make_settings(**limits)
    with LiveServer(create_app(settings), settings) as live:
        live.wait_ready()
        yield live


def _client(live: LiveServer, timeout: float):
    with httpx.Client(base_url=live.url, timeout=timeout, headers={"X-API-Key": API_KEY}) as client:
        yield client


@pytest.fixture(scope="module")
def hardened(make_settings):
    """A server with the project's transport limits, short enough to observe."""
    yield from _serving(make_settings, header_timeout_s=2, body_timeout_s=2, max_connections=6)


@pytest.fixture(scope="module")
def guarded(make_settings):
    """Short transport limits to observe; a connection cap of 8 requests in flight."""
    yield from _serving(make_settings, header_timeout_s=2, request_line_timeout_s=1, max_connections=8)


@pytest.fixture()
def http(hardened):
    yield from _client(hardened, TIMEOUT_S)


@pytest.fixture()
def guarded_http(guarded):
    yield from _client(guarded, SLOW_TIMEOUT_S)


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
        deadline = time.monotonic() + 5  # the server thread logs the access once the answer is sent: wait for it
        while not any("forged" in r.getMessage() for r in records) and time.monotonic() < deadline:
            time.sleep(0.01)
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


def _files(field: str, data: bytes, copies: int) -> list:
    return [(field, (f"{i}.bin", data, "application/octet-stream")) for i in range(copies)]


def _search_ok(client: httpx.Client, query: bytes) -> int:
    return client.post("/search", files={"image": ("q.png", query, "image/png")}).status_code


# Decoding: the format from magic bytes, in processes, off the loop.

@pytest.mark.parametrize("route", ["/search", "/search/batch", "/probe"])
def test_ten_mib_that_are_no_allowed_format_get_415(guarded_http, route):
    """PostScript lines that Pillow's EPS plugin would read for seconds (it ran when every plugin was tried)."""
    field, copies = ("images", 3) if route == "/search/batch" else ("image", 1)
    response = guarded_http.post(route, files=_files(field, bombs.eps_like((10 << 20) - 4096), copies), data={"steps": "2"})
    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == "unsupported_image_format"


def test_readyz_answers_within_a_second_while_a_batch_decodes(make_settings, artifacts):
    """Eight costly JPEGs (about 0.3 s each) in one batch, decoded one after another by one process, keep it busy for
    seconds on any CPU (the request's pixel budget lets all eight through); the loop is not it."""
    settings = make_settings(decode_time_limit_s=60, decode_processes=1, max_request_pixels=8 * 2048 * 2048)
    with LiveServer(create_app(settings), settings) as live:
        live.wait_ready()
        batch = threading.Thread(target=lambda: httpx.post(f"{live.url}/search/batch", timeout=SLOW_TIMEOUT_S,
                                                           files=_files("images", bombs.costly_jpeg(), 8)))
        batch.start()
        latencies = []
        with httpx.Client(base_url=live.url, timeout=SLOW_TIMEOUT_S) as client:
            time.sleep(0.05)  # the batch is decoding now
            while batch.is_alive() and len(latencies) < 20:
                start = time.perf_counter()
                assert client.get("/readyz").status_code == 200
                latencies.append(time.perf_counter() - start)
                time.sleep(0.02)
        batch.join(SLOW_TIMEOUT_S)
    assert len(latencies) >= 3, "the batch ended before /readyz was asked during it"
    assert max(latencies) < 1.0, latencies


def test_a_decode_that_overruns_is_killed_and_its_process_replaced(monkeypatch):
    """The kill is the backstop for a decoder stuck in one call: with no grace at all, the pool's timeout fires
    before the decoder's own deadline, and the next decode runs in a fresh process. The pool's timeout (20 ms) is
    far below what the 4000x4000 progressive JPEG takes on any CPU (over a second here), so no CPU is fast enough to
    finish first."""
    monkeypatch.setattr(decoding, "KILL_GRACE_S", -4.98)  # pool timeout 0.02 s

    async def main():
        pool = DecodePool(1)
        try:
            await pool.warm()
            with pytest.raises(DecodeTimeLimit, match="process was stopped"):
                await pool.decode(bombs.costly_jpeg(side=4000), size=28, channels=1, max_pixels=1 << 24,
                                  time_limit_s=5)
            pixels, count, _ = await pool.decode(png(Image.new("L", (8, 8), 255)), size=4, channels=1,
                                                 max_pixels=64, time_limit_s=10)
            return pixels, count
        finally:
            pool.close()

    pixels, count = asyncio.run(asyncio.wait_for(main(), SLOW_TIMEOUT_S))
    assert count == 64 and pixels.shape == (1, 4, 4) and (pixels == 1).all()


# One budget per request.

def test_a_batch_shares_one_decode_time_limit(make_settings):
    """Each costly JPEG decodes well within the limit alone; sixteen of them in one request do not."""
    settings = make_settings(decode_time_limit_s=1.0, max_request_pixels=1 << 30)
    with LiveServer(create_app(settings), settings) as live:
        live.wait_ready()
        with httpx.Client(base_url=live.url, timeout=SLOW_TIMEOUT_S) as client:
            alone = client.post("/search", files=_files("image", bombs.costly_jpeg(), 1))
            batch = client.post("/search/batch", files=_files("images", bombs.costly_jpeg(), 16))
    assert alone.status_code == 200, alone.text
    assert batch.status_code == 422 and batch.json()["error"]["code"] == "decode_time_limit", batch.text[:300]


def test_a_batch_shares_one_pixel_budget(guarded_http):
    limits = guarded_http.get("/info").json()["limits"]
    side = int(limits["max_pixels"] ** 0.5)
    big = png(Image.new("L", (side, side), 200))  # at the per-image cap: one is fine, the batch is not
    copies = limits["max_request_pixels"] // (side * side) + 1
    assert guarded_http.post("/search", files=_files("image", big, 1)).status_code == 200
    response = guarded_http.post("/search/batch", files=_files("images", big, copies))
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "image_too_large"
    assert "max_request_pixels" in response.json()["error"]["message"]


# Bounded memory.

def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def test_rss_returns_to_its_baseline_after_a_flood_of_text_bombs(guarded_http, artifacts):
    """12 PNGs whose text inflates to 64 MiB each, then 3 batches of 32 of them: each refused by the metadata cap,
    and the server (this process) keeps none of it (it used to keep about 66 MB per image)."""
    bomb = bombs.png_text_bomb()
    for _ in range(3):  # warm: allocator pools, the form parser, first-use caches
        guarded_http.post("/search/batch", files=_files("images", bomb, 32))
    gc.collect()
    baseline = _rss_mb()
    answers = [guarded_http.post("/search", files=_files("image", bomb, 1)) for _ in range(12)]
    answers += [guarded_http.post("/search/batch", files=_files("images", bomb, 32)) for _ in range(3)]
    gc.collect()
    after = _rss_mb()
    assert {(r.status_code, r.json()["error"]["code"]) for r in answers} == {(413, "image_too_complex")}
    assert after <= baseline * 1.1, (baseline, after)
    assert _search_ok(guarded_http, png(artifacts.queries[0])) == 200


def test_rss_returns_to_its_baseline_after_a_flood_of_ten_mib_bodies(guarded_http):
    """Two clients at once, then batches of 3, of 10 MiB bodies with a PNG's first bytes (so they go to the decoding
    processes, unlike those refused by their first bytes). Each refusal used to stay alive in a reference cycle
    (serve.decoding) until a full collection: about 240 MB after this flood."""
    junk = b"\x89PNG\r\n\x1a\n" + bombs.eps_like((10 << 20) - 4096)
    guarded_http.post("/search", files=_files("image", junk, 1))  # warm: the form parser, first-use caches
    gc.collect()
    baseline, answers = _rss_mb(), []

    def client() -> None:
        with httpx.Client(base_url=guarded_http.base_url, timeout=SLOW_TIMEOUT_S, headers=guarded_http.headers) as own:
            answers.extend(own.post("/search", files=_files("image", junk, 1)) for _ in range(8))

    clients = [threading.Thread(target=client) for _ in range(2)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(SLOW_TIMEOUT_S)
    answers += [guarded_http.post("/search/batch", files=_files("images", junk, 3)) for _ in range(4)]
    deadline = time.monotonic() + 10  # the trim runs in a thread after the answer
    while (after := _rss_mb()) > baseline * 1.1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert {r.status_code for r in answers} == {422}
    assert after <= baseline * 1.1, (baseline, after)


# Connections.

def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=SLOW_TIMEOUT_S)


def test_an_idle_socket_flood_neither_takes_the_cap_nor_lasts(guarded, guarded_http, artifacts):
    """Far more silent sockets than the cap: ordinary requests all answer 200, and each silent socket is closed
    after the request-line timeout."""
    idle = [_connect(guarded.url) for _ in range(60)]
    try:
        statuses = [_search_ok(guarded_http, png(artifacts.queries[0])) for _ in range(10)]
        for sock in idle:
            assert sock.recv(1) == b""  # closed by the server (a timeout here would raise)
    finally:
        for sock in idle:
            sock.close()
    assert statuses == [200] * 10


def test_connections_that_sent_a_request_line_count_against_the_cap(guarded):
    started = [_connect(guarded.url) for _ in range(8)]
    try:
        for sock in started:
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")  # headers not finished: in flight
        time.sleep(0.2)
        with _connect(guarded.url) as sock:
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = _read_response(sock)
    finally:
        for sock in started:
            sock.close()
    assert _status_and_code(answer) == (503, "too_many_connections")


def _read_response(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if length is not None and len(body) >= length:
                break
    except (ConnectionResetError, socket.timeout):
        pass
    return b"".join(chunks)


@pytest.mark.parametrize("count, size", [(2_000, 10), (10_000, 8)], ids=["26KiB-one-read", "106KiB"])
def test_many_small_headers_in_one_write_get_431(guarded, count, size):
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"v" * size) for i in range(count))
    with _connect(guarded.url) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        assert _status_and_code(_read_response(sock)) == (431, "headers_too_large")


# Numbers bounded before conversion; security headers; the page only at /.

HUGE = "9" * 5000


@pytest.mark.parametrize("route, files, data, params", [
    ("/search", "image", {"top_k": HUGE}, {}),
    ("/search", None, {}, {"top_k": HUGE}),
    ("/search/batch", "images", {"top_k": HUGE}, {}),
    ("/probe", "image", {"steps": HUGE}, {}),
    ("/probe", "image", {"eps": HUGE}, {}),
    ("/probe", "image", {"top_k": HUGE}, {}),
], ids=["search-form", "search-query", "batch-form", "probe-steps", "probe-eps", "probe-top_k"])
def test_a_number_of_5000_digits_is_a_422_not_a_500(guarded_http, artifacts, route, files, data, params):
    query = png(artifacts.queries[0])
    if files:
        response = guarded_http.post(route, files=_files(files, query, 1), data=data, params=params)
    else:
        response = guarded_http.post(route, content=query, headers={"Content-Type": "image/png"}, params=params)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"


def test_a_content_length_of_5000_digits_is_refused(guarded):
    with _connect(guarded.url) as sock:
        sock.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: " + HUGE.encode() + b"\r\n\r\n")
        answer = _read_response(sock)
    assert 400 <= int(answer.split()[1]) < 500, answer[:200]


def test_item_ids_of_5000_digits_are_422(guarded_http):
    assert guarded_http.get(f"/items/{HUGE}/thumbnail").status_code == 422


@pytest.mark.parametrize("path", ["/", "/livez", "/info", "/static/app.js", "/no/such/route", "/docs"])
def test_every_response_carries_the_security_headers(guarded_http, path):
    headers = guarded_http.get(path).headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


def test_refusals_from_the_transport_carry_the_security_headers(guarded):
    with _connect(guarded.url) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * (64 << 10) + b"\r\n\r\n")
        head = _read_response(sock).partition(b"\r\n\r\n")[0].lower()
    assert b"x-content-type-options: nosniff" in head and b"content-security-policy:" in head


def test_the_page_is_served_only_at_the_root(guarded_http):
    assert "script-src 'self'" in guarded_http.get("/").headers["Content-Security-Policy"]
    for path in ("/static/index.html", "/static/./index.html", "/static//index.html"):
        assert guarded_http.get(path).status_code == 404, path
    assert guarded_http.get("/static/app.js").status_code == 200


def test_oversized_headers_of_a_pipelined_request_get_431(guarded):
    """The second request of one write: only the parser sees where its headers start (the refusal may come before
    the first request's answer is written)."""
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 10) for i in range(2_000))
    with _connect(guarded.url) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\nGET /livez HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        received = b""
        with contextlib.suppress(ConnectionResetError, socket.timeout):
            while b"431" not in received and (chunk := sock.recv(65536)):
                received += chunk
    assert b"HTTP/1.1 431" in received, received[:300]
