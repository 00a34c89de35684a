"""retrieval.models.bundle and the ONNX embedder: hashing, the manifest's rules, every refusal of Bundle.load with the
message that names what is wrong, and the embedder's unit vectors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.errors import UserError
from retrieval.gallery.embedder import OnnxEmbedder
from retrieval.models.bundle import Bundle, sha256_file, verify_manifest, write_manifest
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


def _files(directory: Path, **contents: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        (directory / name).write_bytes(data)
    return directory


def _manifest(directory: Path, manifest: dict) -> Path:
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory / "manifest.json"


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) * 2 + 7])
def test_sha256_file_is_the_sha256_of_the_whole_file(tmp_path, size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_write_manifest_hashes_the_named_files_and_keeps_extra_keys(tmp_path):
    directory = _files(tmp_path / "d", a=b"alpha", b=b"beta", ignored=b"x")
    manifest = write_manifest(directory, ("a", "b"), model_sha256="m", note=1)
    assert manifest == {"files": {"a": hashlib.sha256(b"alpha").hexdigest(), "b": hashlib.sha256(b"beta").hexdigest()},
                        "model_sha256": "m", "note": 1}
    assert json.loads((directory / "manifest.json").read_text()) == manifest
    assert verify_manifest(directory, "thing", required=("a",), optional=("b",)) == manifest


@pytest.mark.parametrize("files", [None, {}, ["a"], "a"])
def test_a_manifest_without_a_files_table_lists_no_files(tmp_path, files):
    directory = _files(tmp_path / "d", a=b"1")
    path = _manifest(directory, {} if files is None else {"files": files})
    with pytest.raises(UserError) as error:
        verify_manifest(directory, "thing", required=("a",))
    assert str(error.value) == f"thing manifest {path} lists no files"


def test_unexpected_and_uncovered_names_are_listed_in_order(tmp_path):
    directory = _files(tmp_path / "d", a=b"1", b=b"2")
    digest = hashlib.sha256(b"1").hexdigest()
    path = _manifest(directory, {"files": {"a": digest, "zz": digest, "/etc/passwd": digest, "y" * 100: digest}})
    with pytest.raises(UserError) as error:
        verify_manifest(directory, "thing", required=("a",), optional=("b",))
    assert str(error.value) == f"thing manifest {path} lists unexpected files: /etc/passwd, {'y' * 80}, zz"
    path = _manifest(directory, {"files": {"b": hashlib.sha256(b"2").hexdigest()}})
    with pytest.raises(UserError) as error:
        verify_manifest(directory, "thing", required=("a", "c"), optional=("b",))
    assert str(error.value) == f"thing manifest {path} does not cover a, c"


def test_optional_files_are_verified_when_listed(tmp_path):
    directory = _files(tmp_path / "d", a=b"1", b=b"2")
    write_manifest(directory, ("a", "b"))
    (directory / "b").write_bytes(b"3")
    with pytest.raises(UserError) as error:
        verify_manifest(directory, "thing", required=("a",), optional=("b",))
    assert str(error.value) == (f"thing file {directory / 'b'} does not match its manifest sha256 "
                                "(modified or truncated)")


def test_a_listed_file_that_is_missing_a_directory_or_outside_is_refused(tmp_path):
    directory = _files(tmp_path / "d", a=b"1")
    write_manifest(directory, ("a",))
    (directory / "a").unlink()
    (directory / "a").mkdir()
    with pytest.raises(UserError) as error:
        verify_manifest(directory, "thing", required=("a",))
    assert str(error.value) == f"thing file {directory / 'a'} is missing (listed in its manifest)"
    (directory / "a").rmdir()
    _files(tmp_path, outside=b"1")
    (directory / "a").symlink_to(tmp_path / "outside")
    with pytest.raises(UserError) as error:
        verify_manifest(directory, "thing", required=("a",))
    assert str(error.value) == f"thing file a resolves outside {directory.resolve()}"
    (directory / "manifest.json").unlink()
    with pytest.raises(UserError) as error:
        verify_manifest(directory, "thing", required=("a",))
    assert str(error.value) == f"thing file {directory / 'manifest.json'} not found"


def test_load_reads_every_field_as_its_type(bundle_dir: Path, tmp_path: Path):
    copy = make_bundle(tmp_path / "b")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config | {"input_size": "8", "channels": "1", "embedding_dim": "16"}))
    bundle = Bundle.load(copy, verify=False)
    assert (bundle.input_size, bundle.channels, bundle.embedding_dim) == (8, 1, 16)
    assert bundle.weights_path == copy / "weights.safetensors"
    assert bundle.path == copy and bundle.config["arch"] == "tiny"
    assert Bundle.load(str(bundle_dir)).path == bundle_dir


def test_load_refuses_a_file_in_place_of_the_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError) as error:
        Bundle.load(tmp_path / "file")
    assert str(error.value) == f"bundle directory {tmp_path / 'file'} does not exist"


@pytest.mark.parametrize("verify", [True, False])
def test_load_refuses_a_manifest_at_odds_with_its_model_hash(tmp_path, verify):
    copy = make_bundle(tmp_path / "b")
    manifest = json.loads((copy / "manifest.json").read_text())
    path = _manifest(copy, manifest | {"model_sha256": "0" * 64})
    with pytest.raises(UserError) as error:
        Bundle.load(copy, verify=verify)
    assert str(error.value) == f"bundle manifest {path} disagrees with itself about model.onnx"
    manifest.pop("model_sha256")
    _manifest(copy, manifest)
    with pytest.raises(UserError, match="disagrees with itself"):
        Bundle.load(copy, verify=verify)


def test_unverified_load_still_needs_a_manifest_naming_the_three_files(tmp_path):
    copy = make_bundle(tmp_path / "b")
    manifest = json.loads((copy / "manifest.json").read_text())
    path = _manifest(copy, manifest | {"files": {"model.onnx": manifest["files"]["model.onnx"]}})
    with pytest.raises(UserError) as error:
        Bundle.load(copy, verify=False)
    assert str(error.value) == f"bundle manifest {path} does not cover weights.safetensors, config.json"
    _manifest(copy, {"model_sha256": manifest["model_sha256"]})
    with pytest.raises(UserError, match="does not cover model.onnx, weights.safetensors, config.json"):
        Bundle.load(copy, verify=False)


@pytest.mark.parametrize("key", ["arch", "input_size", "channels", "embedding_dim"])
def test_load_names_a_missing_config_key(tmp_path, key):
    copy = make_bundle(tmp_path / "b")
    config = json.loads((copy / "config.json").read_text())
    del config[key]
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError) as error:
        Bundle.load(copy, verify=False)
    assert str(error.value) == f"bundle config {copy / 'config.json'} lacks '{key}'"
    with pytest.raises(UserError) as error:
        Bundle.load(copy)
    assert str(error.value) == (f"bundle file {copy / 'config.json'} does not match its manifest sha256 "
                                "(modified or truncated)")


@pytest.mark.parametrize("verify", [True, False])
def test_load_names_an_unreadable_config_or_manifest_as_the_bundle_s(tmp_path, verify):
    copy = make_bundle(tmp_path / "b")
    (copy / "config.json").write_text("{broken")
    write_manifest(copy, ("model.onnx", "weights.safetensors", "config.json"),
                   model_sha256=sha256_file(copy / "model.onnx"))
    with pytest.raises(UserError) as error:
        Bundle.load(copy, verify=verify)
    assert str(error.value).startswith(f"bundle file {copy / 'config.json'} is not readable JSON: ")
    (copy / "manifest.json").unlink()
    with pytest.raises(UserError) as error:
        Bundle.load(copy, verify=verify)
    assert str(error.value) == f"bundle file {copy / 'manifest.json'} not found"
