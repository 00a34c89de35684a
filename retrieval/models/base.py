"""The embedding network interface and the registry of architectures."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from retrieval.registry import Registered, Registry

ARCHS = Registry("architecture", key="arch")
"""Every architecture by name (`train --model`, a checkpoint's or bundle's `arch`)."""


class EmbeddingNet(Registered, nn.Module):
    """[0, 1] images in, L2-normalised embeddings out (metric N). A subclass that sets `arch` registers itself in
    ARCHS; its class attributes say which input-size protocol it trains, evaluates and serves under."""

    registry = ARCHS
    arch: ClassVar[str]
    input_size: ClassVar[int]
    channels: ClassVar[int]
    embedding_dim: int

    @classmethod
    def build(cls, embedding_dim: int, *, pretrained: bool) -> EmbeddingNet:
        """A fresh model; architectures with pretrained weights to start from override this to use `pretrained`."""
        return cls(embedding_dim)
