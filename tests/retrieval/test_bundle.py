"""Bundle verification and the ONNX embedder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.models.bundle import Bundle
from retrieval.gallery.embedder import OnnxEmbedder
from retrieval.errors import UserError
from tests.support.bundles import DIM, SIZE, make_bundle


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


def test_load_exposes_config_and_model_hash(bundle_dir: Path) -> None:
    bundle = Bundle.load(bundle_dir)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert bundle.model_sha256 == manifest["model_sha256"] == manifest["files"]["model.onnx"]
    assert (bundle.input_size, bundle.channels, bundle.embedding_dim) == (SIZE, 1, DIM)
    assert bundle.onnx_path == bundle_dir / "model.onnx"


@pytest.mark.parametrize("name", ["model.onnx", "weights.safetensors", "config.json"])
def test_modified_file_is_refused_by_name(bundle_dir: Path, tmp_path: Path, name: str) -> None:
    copy = make_bundle(tmp_path / "b")
    with open(copy / name, "ab") as fh:
        fh.write(b" ")
    with pytest.raises(UserError, match=name):
        Bundle.load(copy)
    Bundle.load(copy, verify=False)  # an explicit opt-out still reads it


def test_missing_file_and_missing_manifest_are_user_errors(tmp_path: Path) -> None:
    copy = make_bundle(tmp_path / "b")
    (copy / "weights.safetensors").unlink()
    with pytest.raises(UserError, match="weights.safetensors.*missing"):
        Bundle.load(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(UserError, match="manifest.json"):
        Bundle.load(copy)
    with pytest.raises(UserError, match="does not exist"):
        Bundle.load(tmp_path / "nowhere")


def test_embedder_returns_unit_vectors_independent_of_batching(bundle_dir: Path) -> None:
    images = torch.rand(37, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    bundle = Bundle.load(bundle_dir)
    whole = OnnxEmbedder(bundle, threads=1).embed(images)
    pieces = OnnxEmbedder(bundle, threads=1, batch_size=5).embed(images.numpy())
    assert whole.shape == (37, DIM) and whole.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(whole, pieces, atol=1e-6)


def test_embedder_rejects_wrong_shape(bundle_dir: Path) -> None:
    embedder = OnnxEmbedder(Bundle.load(bundle_dir), threads=1)
    with pytest.raises(UserError, match="shape"):
        embedder.embed(torch.rand(2, 3, SIZE, SIZE))
