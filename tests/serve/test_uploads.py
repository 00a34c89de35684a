"""Issue 8.1: every bad or odd upload gets its documented status (or a correct answer) and the service stays ready."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.support.service import API_KEY, png


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb needs no more than that to be refused)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def shirt(artifacts) -> Image.Image:
    return Image.fromarray((artifacts.queries[0][0].numpy() * 255).astype("uint8"), mode="L")


def _bad_uploads(shirt: Image.Image) -> dict[str, tuple[bytes, int, str | None]]:
    good_png, good_jpeg = _encoded(shirt, "PNG"), _encoded(shirt.convert("RGB"), "JPEG")
    return {
        "not an image": (b"%PDF-1.4 certainly not pixels" * 10, 415, "unsupported_image_format"),
        "truncated png": (good_png[: len(good_png) // 2], 422, "corrupt_image"),
        "truncated jpeg": (good_jpeg[: len(good_jpeg) // 2], 422, "corrupt_image"),
        "zero bytes": (b"", 422, "corrupt_image"),
        "20000x20000 png bomb": (_png_header_only(20000, 20000), 413, "image_too_large"),
        "tiff (not allowed)": (_encoded(shirt, "TIFF"), 415, "unsupported_image_format"),
    }


def _odd_but_valid(shirt: Image.Image) -> dict[str, bytes]:
    sixteen = Image.fromarray(np.asarray(shirt, dtype=np.uint16) * 257)
    return {
        "cmyk jpeg": _encoded(shirt.convert("CMYK"), "JPEG"),
        "16-bit png": _encoded(sixteen, "PNG"),
        "palette png": _encoded(shirt.convert("P"), "PNG"),
        "rgba png": _encoded(shirt.convert("RGBA"), "PNG"),
        "la png": _encoded(shirt.convert("LA"), "PNG"),
        "webp": _encoded(shirt, "WEBP", lossless=True),
    }


@pytest.mark.parametrize("route", ["/search", "/probe"])
def test_bad_images_get_their_status_and_service_stays_ready(client, shirt, route):
    for name, (data, status, code) in _bad_uploads(shirt).items():
        response = client.post(route, files={"image": ("upload", data, "application/octet-stream")},
                               data={"steps": "2"}, headers={"X-API-Key": API_KEY})
        assert response.status_code == status, (name, response.text)
        assert response.json()["error"]["code"] == code, name
        assert client.get("/readyz").status_code == 200, name


def test_odd_but_valid_images_rank_like_the_plain_one(client, shirt):
    plain = client.post("/search", files={"image": ("q.png", png(shirt), "image/png")}).json()["results"][0]["id"]
    for name, data in _odd_but_valid(shirt).items():
        response = client.post("/search", files={"image": ("upload", data, "application/octet-stream")})
        assert response.status_code == 200, (name, response.text)
        if name != "cmyk jpeg":  # lossy colour round trip: answered, but not necessarily the same top-1
            assert response.json()["results"][0]["id"] == plain, name


def test_50_mb_body_is_refused_from_content_length(client):
    response = client.post("/search", files={"image": ("big.png", b"\0" * (50 << 20), "image/png")})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert client.get("/readyz").status_code == 200


def test_oversized_chunked_body_is_cut_off_while_reading(client):
    def chunks():
        yield b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n\r\n"
        for _ in range(24):
            yield b"\0" * (1 << 20)

    response = client.post("/search", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize("files, data, field", [
    ({}, {"top_k": "3"}, "image"),
    ({"file": ("q.png", b"x", "image/png")}, {}, "image"),
    ({"image": "IMAGE"}, {"top_k": "0"}, "top_k"),
    ({"image": "IMAGE"}, {"top_k": "101"}, "top_k"),
    ({"image": "IMAGE"}, {"top_k": "ten"}, "top_k"),
])
def test_missing_misnamed_and_out_of_range_fields_are_422(client, shirt, files, data, field):
    files = {k: (("q.png", png(shirt), "image/png") if v == "IMAGE" else v) for k, v in files.items()}
    response = client.post("/search", files=files or None, data=data)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert field in response.json()["error"]["message"]
    assert client.get("/readyz").status_code == 200


def test_too_many_images_in_a_batch_is_413(client, shirt):
    files = [("images", (f"{i}.png", png(shirt), "image/png")) for i in range(33)]
    response = client.post("/search/batch", files=files)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_images"
    assert client.get("/readyz").status_code == 200
