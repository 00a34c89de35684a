"""C2F2: the small 28x28 convolutional embedding network of the reference implementation."""

from __future__ import annotations

import torch
from torch import nn

from retrieval.distances import normalize
from retrieval.models.base import EmbeddingNet


class C2F2(EmbeddingNet):
    """Two conv blocks and two linear layers; no BatchNorm or dropout, PyTorch default init.

    The forward returns L2-normalised embeddings so every consumer (loss, miners, attacks, ONNX) sees metric `N`.
    """

    arch = "c2f2"
    input_size = 28
    channels = 1

    def __init__(self, embedding_dim: int = 512) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 1024),
            nn.ReLU(),
            nn.Linear(1024, embedding_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float [N, 1, 28, 28] in [0, 1] (no mean/std normalisation)."""
        return normalize(self.head(self.features(x)))
