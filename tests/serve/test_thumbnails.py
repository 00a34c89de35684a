"""Thumbnails: stored by `robust-retrieval index` in the generation, served by GET /items/{id}/thumbnail."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from retrieval.gallery import thumbnails as thumbnails_module
from retrieval.errors import UserError
from retrieval.gallery.index import GalleryIndex
from serve.app import create_app
from serve.cli import app as cli
from tests.support.service import LiveServer


def _index(*args: str):
    return CliRunner().invoke(cli, ["index", *args, "--threads", "1"])


def _photos(directory: Path, n: int, seed: int) -> list[Path]:
    """Colour images larger than a thumbnail, each a different flat colour plus noise."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        base = rng.integers(0, 256, 3)
        pixels = np.clip(base + rng.normal(0, 8, (200, 300, 3)), 0, 255).astype(np.uint8)
        paths.append(directory / f"photo-{seed}-{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def _decoded(response: httpx.Response) -> Image.Image:
    return Image.open(io.BytesIO(response.content))


def test_thumbnail_is_the_items_pixels_with_cache_headers(client, artifacts):
    from retrieval.datasets import load_dataset

    response = client.get("/items/5/thumbnail")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert "max-age" in response.headers["cache-control"]
    expected = (load_dataset("fashion-mnist", "test").tensors()[5, 0] * 255).round().byte().numpy()
    assert np.array_equal(np.asarray(_decoded(response)), expected)  # lossless: exactly the gallery item
    again = client.get("/items/5/thumbnail", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and not again.content
    assert client.get("/items/6/thumbnail").headers["etag"] != response.headers["etag"]


@pytest.mark.parametrize("item", ["1000", "-1", "99999999999"])
def test_unknown_item_is_404(client, item):
    response = client.get(f"/items/{item}/thumbnail")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_item"


def test_non_integer_id_is_422(client):
    assert client.get("/items/abc/thumbnail").status_code == 422


def test_info_reports_index_type_and_thumbnails(client):
    index = client.get("/info").json()["index"]
    assert index["type"] == "flat" and index["thumbnails"] is True


def test_index_built_with_no_thumbnails_answers_404_with_its_code(tmp_path, artifacts, make_settings):
    _photos(tmp_path / "images", 3, seed=0)
    out = tmp_path / "indexes" / "plain"
    result = _index("--bundle", str(artifacts.bundle), "--images", str(tmp_path / "images"), "-o", str(out),
                    "--no-thumbnails")
    assert result.exit_code == 0, result.output
    assert "no thumbnails" in result.output
    generation = sorted(out.glob("gen-*"))[-1]
    assert not (generation / thumbnails_module.BLOB_FILE).exists()
    settings = make_settings(index=out, index_root=tmp_path / "indexes", enable_probe=False)
    with LiveServer(create_app(settings)) as live:
        live.wait_ready()
        response = httpx.get(f"{live.url}/items/0/thumbnail")
        info = httpx.get(f"{live.url}/info").json()
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "no_thumbnails"
    assert "--no-thumbnails" in response.json()["error"]["message"]
    assert info["index"]["thumbnails"] is False


def test_appended_item_gets_its_thumbnail(tmp_path, artifacts, make_settings):
    images = tmp_path / "images"
    _photos(images, 4, seed=0)
    out = tmp_path / "indexes" / "photos"
    assert _index("--bundle", str(artifacts.bundle), "--images", str(images), "-o", str(out)).exit_code == 0
    (new,) = _photos(images / "more", 1, seed=7)
    result = _index("--bundle", str(artifacts.bundle), "--images", str(images), "-o", str(out), "--append")
    assert result.exit_code == 0, result.output
    assert "indexed 1 images" in result.output
    gallery = GalleryIndex.load(out)
    appended = gallery.metadata.column("source").to_pylist().index(str(new))
    assert appended == 4 and len(gallery.thumbnails) == 5
    settings = make_settings(index=out, index_root=tmp_path / "indexes", enable_probe=False)
    with LiveServer(create_app(settings)) as live:
        live.wait_ready()
        response = httpx.get(f"{live.url}/items/{appended}/thumbnail")
        first = httpx.get(f"{live.url}/items/0/thumbnail")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    preview = _decoded(response)
    assert max(preview.size) == thumbnails_module.MAX_SIDE and preview.size == (128, 85)  # bounded, aspect kept
    expected = np.asarray(Image.open(new).convert("L"), dtype=float).mean()
    assert abs(np.asarray(preview, dtype=float).mean() - expected) < 3  # the appended photo, not another one
    assert abs(np.asarray(_decoded(first), dtype=float).mean() - expected) > 3


def test_append_cannot_switch_thumbnails_off(tmp_path, artifacts):
    images = tmp_path / "images"
    _photos(images, 2, seed=0)
    out = str(tmp_path / "idx")
    assert _index("--bundle", str(artifacts.bundle), "--images", str(images), "-o", out).exit_code == 0
    _photos(images / "more", 1, seed=3)
    result = _index("--bundle", str(artifacts.bundle), "--images", str(images), "-o", out, "--append",
                    "--no-thumbnails")
    assert isinstance(result.exception, UserError) and "keeps the index's thumbnails" in str(result.exception)
    assert len(GalleryIndex.load(out)) == 2


def test_crash_while_writing_thumbnails_keeps_previous_generation(tmp_path, artifacts, monkeypatch):
    images = tmp_path / "images"
    _photos(images, 2, seed=0)
    out = tmp_path / "idx"
    assert _index("--bundle", str(artifacts.bundle), "--images", str(images), "-o", str(out)).exit_code == 0
    _photos(images / "more", 2, seed=5)

    def crash(self, directory):
        raise OSError("disk full")

    monkeypatch.setattr(thumbnails_module.Thumbnails, "write", crash)
    result = _index("--bundle", str(artifacts.bundle), "--images", str(images), "-o", str(out))
    assert isinstance(result.exception, OSError)
    gallery = GalleryIndex.load(out)
    assert len(gallery) == 2 and len(gallery.thumbnails) == 2
    assert sorted(p.name for p in out.iterdir()) == ["CURRENT", "gen-000001"]


def test_truncated_thumbnails_are_refused(tmp_path, artifacts):
    images = tmp_path / "images"
    _photos(images, 2, seed=0)
    out = tmp_path / "idx"
    assert _index("--bundle", str(artifacts.bundle), "--images", str(images), "-o", str(out)).exit_code == 0
    blob = sorted(out.glob("gen-*"))[-1] / thumbnails_module.BLOB_FILE
    blob.write_bytes(blob.read_bytes()[:-10])
    with pytest.raises(UserError, match=thumbnails_module.BLOB_FILE):
        GalleryIndex.load(out)
    with pytest.raises(UserError, match="thumbnail offsets"):
        GalleryIndex.load(out, verify=False)
