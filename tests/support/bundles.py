"""A real but tiny model bundle (8x8 grey images by default -> 16-d unit vectors) built with torch alone.

The retrieval layer must not need `training` to be tested, so this writes the bundle layout directly.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn

from retrieval.models.bundle import BUNDLE_FILES, sha256_file, write_manifest

SIZE = 8
DIM = 16


class TinyNet(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(size * size, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.fc(x.flatten(1)), dim=1)


def make_bundle(directory: Path, seed: int = 0, size: int = SIZE) -> Path:
    """Bundle of a random linear model; a different seed gives a different model (and model sha256)."""
    torch.manual_seed(seed)
    model = TinyNet(size).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript exporter: fast, deprecated
        torch.onnx.export(
            model, (torch.rand(2, 1, size, size),), buffer, input_names=["pixel_values"], output_names=["embedding"],
            dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17, dynamo=False,
        )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.onnx").write_bytes(buffer.getvalue())
    (directory / "weights.safetensors").write_bytes(save(dict(model.state_dict())))
    config = {"arch": "tiny", "input_size": size, "channels": 1, "embedding_dim": DIM, "metric": "N"}
    (directory / "config.json").write_text(json.dumps(config))
    write_manifest(directory, BUNDLE_FILES, model_sha256=sha256_file(directory / "model.onnx"))
    return directory
