"""ResNet-18 embedding network for 224x224 images (ImageNet-initialised, as the paper)."""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from retrieval.distances import normalize
from retrieval.models.base import EmbeddingNet

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _backbone(pretrained: bool) -> nn.Module:
    """torchvision ResNet-18, with ImageNet weights when they can be loaded (cache or download), else random init."""
    if not pretrained:
        return resnet18(weights=None)
    try:
        return resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)
    except (OSError, RuntimeError) as err:  # offline (URLError is an OSError) or a corrupt download
        message = f"ImageNet weights for resnet18 unavailable ({err}); using random initialisation"
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return resnet18(weights=None)


class ResNet18(EmbeddingNet):
    """ResNet-18 whose fc is a fresh Linear(512 -> embedding_dim); input in [0, 1], output L2-normalised.

    ImageNet mean/std normalisation runs inside forward so attacks back-propagate through it to [0, 1] pixels.
    With `freeze_bn` (the default, "Revisiting DML" convention) every BatchNorm stays in eval mode even after
    `model.train()`, so running ImageNet statistics are always used while affine BN parameters still train.
    EST sets `model.freeze_bn = False` (takes effect at the next `train()` call) to train BN in batch mode.
    """

    arch = "resnet18"
    input_size = 224
    channels = 3

    def __init__(self, embedding_dim: int = 512, *, pretrained: bool = True, freeze_bn: bool = True) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.freeze_bn = freeze_bn
        self.backbone = _backbone(pretrained)
        self.backbone.fc = nn.Linear(self.backbone.fc.in_features, embedding_dim)
        # Constants, not weights: kept out of the state dict so checkpoints and safetensors hold parameters only.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.train()

    @classmethod
    def build(cls, embedding_dim: int, *, pretrained: bool) -> ResNet18:
        return cls(embedding_dim, pretrained=pretrained)

    def train(self, mode: bool = True) -> ResNet18:
        super().train(mode)
        if self.freeze_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float [N, 3, H, W] in [0, 1]; H = W = 224 for the reference setting."""
        return normalize(self.backbone((x - self.mean) / self.std))
