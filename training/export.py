"""Turn a training run into a self-describing model bundle, and rebuild the torch model from one.

The bundle carries the ONNX graph for fast inference, the weights as safetensors (no pickle) so gradient-based probes
can rebuild the torch model, a config with everything a consumer needs, and a manifest of sha256 sums.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import onnx
import torch
from safetensors.torch import load_file, save

from retrieval.atomic import atomic_write_bytes, atomic_write_json
from retrieval.bundle import BUNDLE_FILES, CONFIG_FILE, MODEL_FILE, WEIGHTS_FILE, Bundle, sha256_file, write_manifest
from retrieval.errors import UserError
from training.models import build_model

OPSET = 17
CHECKPOINT_FILE = "checkpoint.pt"


def export_bundle(run_dir_or_checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Bundle:
    """Write model.onnx, weights.safetensors, config.json and (last) manifest.json into `out_dir`; return it verified."""
    checkpoint_path, run_dir = _resolve(Path(run_dir_or_checkpoint))
    checkpoint = _load_checkpoint(checkpoint_path)
    train_config = checkpoint["config"]
    model = build_model(train_config["arch"], embedding_dim=int(train_config["embedding_dim"]), pretrained=False)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise UserError(f"checkpoint {checkpoint_path} does not fit arch {train_config['arch']!r}: {exc}") from None
    model.eval()

    config = _bundle_config(model, train_config, run_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / MODEL_FILE, _onnx_bytes(model, config))
    weights = {name: tensor.detach().contiguous().clone() for name, tensor in model.state_dict().items()}
    atomic_write_bytes(out_dir / WEIGHTS_FILE, save(weights, metadata={"arch": config["arch"]}))
    atomic_write_json(out_dir / CONFIG_FILE, config)
    write_manifest(out_dir, BUNDLE_FILES, model_sha256=sha256_file(out_dir / MODEL_FILE))
    return Bundle.load(out_dir)


def load_torch_model(bundle_dir: str | os.PathLike) -> torch.nn.Module:
    """Rebuild the eval-mode torch model of a verified bundle from config.json + weights.safetensors."""
    bundle = Bundle.load(bundle_dir)
    model = build_model(bundle.config["arch"], embedding_dim=bundle.embedding_dim, pretrained=False)
    try:
        model.load_state_dict(load_file(bundle.weights_path))
    except RuntimeError as exc:
        raise UserError(f"bundle weights {bundle.weights_path} do not fit arch {bundle.config['arch']!r}: {exc}") from None
    return model.eval()


def _resolve(path: Path) -> tuple[Path, Path | None]:
    """A run directory holds checkpoint.pt; a bare checkpoint file may sit outside any run."""
    if path.is_dir():
        checkpoint = path / CHECKPOINT_FILE
        if not checkpoint.is_file():
            raise UserError(f"run directory {path} has no {CHECKPOINT_FILE}")
        return checkpoint, path
    if path.is_file():
        return path, path.parent
    raise UserError(f"{path} is neither a run directory nor a checkpoint file")


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise UserError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        raise UserError(f"checkpoint {path} lacks 'model' or 'config'")
    for key in ("arch", "embedding_dim"):
        if key not in checkpoint["config"]:
            raise UserError(f"checkpoint {path} config lacks '{key}'")
    return checkpoint


def _bundle_config(model: torch.nn.Module, train_config: dict, run_dir: Path | None) -> dict[str, Any]:
    """The bundle's config.json: model geometry plus the run's method, budget and headline numbers when known."""
    run_config = _optional_json(run_dir, "config.json")
    defense = train_config.get("defense") or run_config.get("defense") or {}
    return {
        "arch": train_config["arch"],
        "input_size": int(model.input_size),
        "channels": int(model.channels),
        "embedding_dim": int(model.embedding_dim),
        "metric": "N",
        "method": train_config.get("method") or run_config.get("method"),
        "eps": train_config.get("eps", run_config.get("eps", defense.get("eps") if isinstance(defense, dict) else None)),
        "R@1": _optional_json(run_dir, "metrics.json").get("R@1"),
        "ERS": _optional_json(run_dir, "robustness.json").get("ERS"),
        "opset": OPSET,
    }


def _optional_json(run_dir: Path | None, name: str) -> dict:
    """Run side files are optional (a bare checkpoint has none); an unreadable one is an error, not silence."""
    if run_dir is None or not (run_dir / name).is_file():
        return {}
    try:
        data = json.loads((run_dir / name).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {run_dir / name}: {exc}") from None
    return data if isinstance(data, dict) else {}


def _onnx_bytes(model: torch.nn.Module, config: dict[str, Any]) -> bytes:
    """TorchScript-based export (fast, no dynamo) with a dynamic batch axis, then metadata and the checker."""
    example = torch.rand(2, config["channels"], config["input_size"], config["input_size"])
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (example,),
        buffer,
        input_names=["pixel_values"],
        output_names=["embedding"],
        dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    graph = onnx.load_model_from_string(buffer.getvalue())
    props = {key: value if isinstance(value, str) else json.dumps(value) for key, value in config.items()}
    onnx.helper.set_model_props(graph, props)
    onnx.checker.check_model(graph, full_check=True)
    return graph.SerializeToString()
