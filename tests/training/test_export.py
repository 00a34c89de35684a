"""Run -> bundle export: ONNX graph contract, torch/onnxruntime parity, safetensors round trip, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from retrieval.models.bundle import Bundle
from retrieval.datasets import load_dataset
from retrieval.gallery.embedder import OnnxEmbedder
from retrieval.errors import UserError
from retrieval.gallery.index import GalleryIndex, metadata_table
from serve.cli import app
from training.config import TrainConfig
from retrieval.models.loading import load_trained
from training.export import export_bundle
from training.defenses.notation import parse_method
from retrieval.models import build_model

METHOD = "HM[S,gLGA]&ICS"


def _write_run(run: Path, *, seed: int = 0) -> torch.nn.Module:
    """A run directory as `train` + `evaluate` leave it (checkpoint with the full TrainConfig, metrics, robustness)."""
    torch.manual_seed(seed)
    model = build_model("c2f2", embedding_dim=512, pretrained=False).eval()
    config = TrainConfig(model="c2f2", defense=parse_method(METHOD)).to_dict()
    run.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "config": config}, run / "checkpoint.pt")
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.json").write_text(json.dumps({"R@1": 0.81}))
    (run / "robustness.json").write_text(json.dumps({"ERS": 0.42}))
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Bundle]:
    root = tmp_path_factory.mktemp("export")
    model = _write_run(root / "run")
    return model, export_bundle(root / "run", root / "bundle")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_dataset("fashion-mnist", "test").tensors()[:300]


def test_onnx_graph_contract(exported: tuple[torch.nn.Module, Bundle]) -> None:
    _, bundle = exported
    graph = onnx.load(str(bundle.onnx_path))
    onnx.checker.check_model(graph, full_check=True)
    assert max(op.version for op in graph.opset_import if op.domain in ("", "ai.onnx")) >= 17
    (inp,), (out,) = graph.graph.input, graph.graph.output
    assert (inp.name, out.name) == ("pixel_values", "embedding")
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # dynamic batch axis
    assert [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["method"] == METHOD and props["metric"] == "N"
    assert (props["input_size"], props["channels"], props["embedding_dim"]) == ("28", "1", "512")
    assert float(props["eps"]) == pytest.approx(77 / 255)
    assert (float(props["R@1"]), float(props["ERS"])) == (0.81, 0.42)


def test_bundle_files_and_config(exported: tuple[torch.nn.Module, Bundle]) -> None:
    _, bundle = exported
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.onnx", "weights.safetensors", "config.json"}
    assert bundle.config["arch"] == "c2f2" and bundle.config["method"] == METHOD
    assert bundle.config["R@1"] == 0.81 and bundle.config["ERS"] == 0.42


@pytest.mark.parametrize("batch", [1, 64])
def test_onnxruntime_matches_torch(exported: tuple[torch.nn.Module, Bundle], images: torch.Tensor, batch: int) -> None:
    model, bundle = exported
    x = images[:batch]
    with torch.no_grad():
        expected = model(x).numpy()
    got = OnnxEmbedder(bundle, threads=1).embed(x)
    assert got.shape == (batch, 512)
    assert np.abs(got - expected).max() <= 1e-4


def test_identical_top10_neighbours(exported: tuple[torch.nn.Module, Bundle], images: torch.Tensor) -> None:
    model, bundle = exported
    with torch.no_grad():
        reference = model(images).numpy()
    onnx_vectors = OnnxEmbedder(bundle, threads=1).embed(images)
    table = metadata_table([str(i) for i in range(len(images))], ["-"] * len(images))
    ids = [GalleryIndex.build(v, table, "flat").search(v[:50], 10)[1] for v in (reference, onnx_vectors)]
    np.testing.assert_array_equal(ids[0], ids[1])


def test_torch_model_rebuilt_from_safetensors(exported: tuple[torch.nn.Module, Bundle], images: torch.Tensor) -> None:
    model, bundle = exported
    rebuilt = load_trained(bundle.path).model
    assert not rebuilt.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images[:4]), model(images[:4]))


def test_tampered_bundle_is_refused(exported: tuple[torch.nn.Module, Bundle], tmp_path: Path) -> None:
    _, bundle = exported
    copy = tmp_path / "bundle"
    copy.mkdir()
    for f in bundle.path.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    data = bytearray((copy / "weights.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="weights.safetensors"):
        load_trained(copy)


def test_bare_checkpoint_without_run_files(tmp_path: Path) -> None:
    model = build_model("c2f2", embedding_dim=32, pretrained=False)
    torch.save({"model": model.state_dict(), "config": {"arch": "c2f2", "embedding_dim": 32}}, tmp_path / "m.pt")
    bundle = export_bundle(tmp_path / "m.pt", tmp_path / "bundle")
    assert bundle.embedding_dim == 32 and bundle.config["method"] is None and bundle.config["R@1"] is None
    props = {p.key for p in onnx.load(str(bundle.onnx_path)).metadata_props}
    assert "ERS" not in props and "embedding_dim" in props  # unknown values are left out, not "null"


def test_bad_inputs_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="neither"):
        export_bundle(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match="no checkpoint.pt"):
        export_bundle(tmp_path / "run", tmp_path / "out")
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        export_bundle(tmp_path / "run", tmp_path / "out")
    wrong = build_model("c2f2", embedding_dim=64, pretrained=False).state_dict()
    torch.save({"model": wrong, "config": {"arch": "c2f2", "embedding_dim": 512}}, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(UserError, match="does not fit"):
        export_bundle(tmp_path / "run", tmp_path / "out")


def test_export_command(tmp_path: Path) -> None:
    _write_run(tmp_path / "run", seed=3)
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "-o", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    assert "model sha256" in result.output
    Bundle.load(tmp_path / "bundle")
