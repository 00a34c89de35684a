"""Issue 8.4: a truncated or tampered model or index, or an index bound to another model, keeps the service unready
and says why in one log line."""

from __future__ import annotations

import logging
import shutil
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from retrieval.gallery.generations import resolve_current
from retrieval.gallery.index import GalleryIndex, metadata_table
from serve.app import create_app


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _bind_other_model(index_dir):
    vectors = np.random.default_rng(0).standard_normal((20, 64)).astype("float32")
    table = metadata_table([f"x{i}" for i in range(20)], ["0" * 64] * 20, list(range(20)))
    GalleryIndex.build(vectors, table, "flat", model_sha256="f" * 64).save(index_dir)


FAULTS = {
    "truncated model": (lambda bundle, index: _truncate(bundle / "model.onnx"), "model.onnx"),
    "tampered weights": (lambda bundle, index: _flip_byte(bundle / "weights.safetensors"), "weights.safetensors"),
    "truncated index": (lambda bundle, index: _truncate(resolve_current(index) / "index.faiss"), "index.faiss"),
    "tampered metadata": (lambda bundle, index: _flip_byte(resolve_current(index) / "metadata.parquet"), "metadata"),
    "index of another model": (lambda bundle, index: _bind_other_model(index), "built with model"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_keeps_service_unready_with_one_clear_log_line(fault, artifacts, make_settings, tmp_path, caplog):
    bundle, index = tmp_path / "bundle", tmp_path / "index"
    shutil.copytree(artifacts.bundle, bundle)
    shutil.copytree(artifacts.index, index)
    damage, expected = FAULTS[fault]
    damage(bundle, index)
    caplog.set_level(logging.INFO, logger="serve")
    with TestClient(create_app(make_settings(index=index, bundle=bundle, index_root=tmp_path))) as client:
        deadline = time.monotonic() + 60
        while not [r for r in caplog.records if r.name == "serve"]:
            assert time.monotonic() < deadline, "the loader neither failed nor succeeded"
            time.sleep(0.02)
        ready = client.get("/readyz")
        search = client.post("/search", files={"image": ("q.png", b"x", "image/png")})
    lines = [r for r in caplog.records if r.name == "serve"]
    assert ready.status_code == 503 and search.status_code == 503
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR and lines[0].exc_info is None
    assert lines[0].getMessage().startswith("not ready: ") and expected in lines[0].getMessage()
