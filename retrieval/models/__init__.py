"""Embedding networks by architecture name; every model returns L2-normalised embeddings of [0, 1] images."""

from __future__ import annotations

from torch import nn

from retrieval.errors import UserError
from retrieval.models.c2f2 import C2F2
from retrieval.models.resnet18 import ResNet18

ARCHS: dict[str, type[nn.Module]] = {"c2f2": C2F2, "resnet18": ResNet18}


def build_model(arch: str, *, embedding_dim: int = 512, pretrained: bool = True) -> nn.Module:
    """A fresh model. `pretrained` asks for ImageNet weights (resnet18 only; C2F2 always starts from default init)."""
    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHS)}")
    if embedding_dim < 1:
        raise UserError(f"embedding_dim must be a positive integer, got {embedding_dim}")
    if arch == "resnet18":
        return ResNet18(embedding_dim, pretrained=pretrained)
    return C2F2(embedding_dim)


__all__ = ["ARCHS", "C2F2", "ResNet18", "build_model"]
