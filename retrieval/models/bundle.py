"""A model bundle on disk: read its config and refuse it when any file differs from its manifest.

The bundle is the hand-off between training and serving, so every consumer goes through `Bundle.load`, which checks
the sha256 of each file named in `manifest.json` before anything is parsed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

from retrieval.atomic import atomic_write_json
from retrieval.errors import UserError
from retrieval.gallery.generations import confined
from retrieval.jsonfiles import read_json

MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
BUNDLE_FILES = (MODEL_FILE, WEIGHTS_FILE, CONFIG_FILE)


def sha256_file(path: str | os.PathLike) -> str:
    """Hash a file in 1 MiB chunks so large weights are never held in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: str | os.PathLike, names: tuple[str, ...], **extra: Any) -> dict:
    """Hash `names` inside `directory` and write manifest.json last, so a half-written directory never verifies."""
    directory = Path(directory)
    manifest = {"files": {name: sha256_file(directory / name) for name in names}, **extra}
    atomic_write_json(directory / MANIFEST_FILE, manifest)
    return manifest


def verify_manifest(directory: str | os.PathLike, what: str, required: Collection[str],
                    optional: Collection[str] = ()) -> dict:
    """Return the manifest of `directory` after checking every listed file; UserError names the first bad one.

    The manifest must list every `required` name and nothing but `required` and `optional` names (plain file names
    from the caller's fixed list: a manifest cannot make us hash /proc or probe for files elsewhere), and each file
    must resolve, symlinks followed, inside `directory`."""
    directory = Path(directory)
    manifest = read_json(directory / MANIFEST_FILE, what)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise UserError(f"{what} manifest {directory / MANIFEST_FILE} lists no files")
    unknown = sorted(str(name)[:80] for name in files if name not in required and name not in optional)
    if unknown:
        raise UserError(f"{what} manifest {directory / MANIFEST_FILE} lists unexpected files: {', '.join(unknown)}")
    missing = [name for name in required if name not in files]
    if missing:
        raise UserError(f"{what} manifest {directory / MANIFEST_FILE} does not cover {', '.join(missing)}")
    for name, expected in files.items():
        path = confined(directory, name, f"{what} file")
        if not path.is_file():
            raise UserError(f"{what} file {directory / name} is missing (listed in its manifest)")
        if sha256_file(path) != expected:
            raise UserError(f"{what} file {directory / name} does not match its manifest sha256 (modified or truncated)")
    return manifest


@dataclass(frozen=True)
class Bundle:
    """A verified bundle directory: `config` is config.json, `model_sha256` identifies the ONNX graph."""

    path: Path
    config: dict[str, Any]
    model_sha256: str

    @property
    def onnx_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def input_size(self) -> int:
        return int(self.config["input_size"])

    @property
    def channels(self) -> int:
        return int(self.config["channels"])

    @property
    def embedding_dim(self) -> int:
        return int(self.config["embedding_dim"])

    @classmethod
    def load(cls, directory: str | os.PathLike, verify: bool = True) -> Bundle:
        """Read a bundle; with `verify` every file must match manifest.json (UserError names the file otherwise)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise UserError(f"bundle directory {directory} does not exist")
        if verify:
            manifest = verify_manifest(directory, "bundle", BUNDLE_FILES)
        else:
            manifest = read_json(directory / MANIFEST_FILE, "bundle")
            missing = [name for name in BUNDLE_FILES if name not in manifest.get("files", {})]
            if missing:
                raise UserError(f"bundle manifest {directory / MANIFEST_FILE} does not cover {', '.join(missing)}")
        model_sha256 = manifest["files"][MODEL_FILE]
        if manifest.get("model_sha256") != model_sha256:
            raise UserError(f"bundle manifest {directory / MANIFEST_FILE} disagrees with itself about model.onnx")
        config = read_json(directory / CONFIG_FILE, "bundle")
        for key in ("arch", "input_size", "channels", "embedding_dim"):
            if key not in config:
                raise UserError(f"bundle config {directory / CONFIG_FILE} lacks '{key}'")
        return cls(path=directory, config=config, model_sha256=model_sha256)
