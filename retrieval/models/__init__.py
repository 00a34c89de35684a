"""Embedding networks by architecture name, and the one loader of trained ones (retrieval/models/loading.py); every
model returns L2-normalised embeddings of [0, 1] images.

Adding an architecture: one file here defining an `EmbeddingNet` subclass with its `arch`, imported below.
"""

from __future__ import annotations

from retrieval.errors import UserError
from retrieval.models.base import ARCHS, EmbeddingNet
from retrieval.models.c2f2 import C2F2  # noqa: F401  (each import registers its architecture)
from retrieval.models.resnet18 import ResNet18  # noqa: F401


def build_model(arch: str, *, embedding_dim: int = 512, pretrained: bool = True) -> EmbeddingNet:
    """A fresh model. `pretrained` asks for ImageNet weights (resnet18 only; C2F2 always starts from default init)."""
    cls = ARCHS.lookup(arch)
    if embedding_dim < 1:
        raise UserError(f"embedding_dim must be a positive integer, got {embedding_dim}")
    return cls.build(embedding_dim, pretrained=pretrained)


__all__ = ["ARCHS", "C2F2", "EmbeddingNet", "ResNet18", "build_model"]
