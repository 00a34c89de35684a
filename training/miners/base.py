"""Miner base class and the vectorised sampling helpers shared by the SPC-2 miners (docs/method.md#miners)."""

from __future__ import annotations

from typing import ClassVar

import torch

from retrieval.distances import distance_matrix, normalize
from retrieval.registry import Registered, Registry

MINERS = Registry("miner", key="name")
"""Every miner by name, in the order training/miners/__init__.py imports them."""


class Miner(Registered):
    """Turns an SPC-2 batch [a0, p0, a1, p1, ...] into N triplets with anchors 0, 2, ..., 2N-2 in that order.

    `reference=True` reproduces the reference implementation's quirks (no clamp before the sqrt of the distance
    matrix, so duplicates can give NaN; per-miner details in each subclass); the default is the intended behaviour.
    `generator` seeds every random choice so mining is reproducible.
    """

    registry = MINERS
    name: ClassVar[str]
    """Registers the miner under this name (--source softhard)."""
    letter: ClassVar[str]
    """Its letter in the paper's notation (HM[S,...])."""

    def __init__(self, margin: float = 0.2, reference: bool = False, generator: torch.Generator | None = None) -> None:
        self.margin = margin
        self.reference = reference
        self.generator = generator

    def __call__(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """embeddings [2N, D], labels [2N] -> (anchor, positive, negative) index tensors, each [N]."""
        if embeddings.dim() != 2 or embeddings.shape[0] % 2 or embeddings.shape[0] != labels.numel():
            raise ValueError(
                f"miner expects 2N embeddings with 2N labels, got {tuple(embeddings.shape)} and {labels.numel()} labels"
            )
        with torch.no_grad():
            emb = normalize(embeddings.detach())
            labels = labels.view(-1).to(emb.device)
            anchors = torch.arange(0, emb.shape[0], 2, device=emb.device)
            positives, negatives = self.mine(emb, labels, anchors)
        return anchors, positives, negatives

    def mine(
        self, embeddings: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive and negative index per anchor."""
        raise NotImplementedError

    # Helpers: all return [N, 2N] tensors, one row per anchor.

    def distances(self, embeddings: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Anchor rows of the Gram-form distance matrix (diagonal exactly 0); unclamped in reference mode."""
        return distance_matrix(embeddings, clamp=not self.reference)[anchors]

    @staticmethod
    def label_masks(labels: torch.Tensor, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(same, different): same-label mask (includes the anchor itself) and its complement."""
        same = labels[anchors][:, None] == labels[None, :]
        return same, ~same

    @staticmethod
    def first_nonempty(*masks: torch.Tensor) -> torch.Tensor:
        """Per row, the first mask that has any True entry in that row (the miners' fallback chains)."""
        chosen = masks[-1]
        for mask in reversed(masks[:-1]):
            chosen = torch.where(mask.any(dim=1, keepdim=True), mask, chosen)
        return chosen

    def sample(self, weights: torch.Tensor) -> torch.Tensor:
        """Per row, one column index drawn with probability proportional to the non-negative `weights`.

        Exponential race: argmax(w / E) with E ~ Exp(1) i.i.d. picks column j with probability w_j / sum(w).
        A boolean mask gives a uniform choice among its True entries. Rows must have a positive weight.
        E is kept above 0 so a zero weight never becomes 0/0 = NaN (which argmax would pick).
        """
        race = torch.empty(weights.shape, device=self.draw_device(weights))
        race = race.exponential_(generator=self.generator).to(weights.device)
        race = race.clamp_min(torch.finfo(race.dtype).tiny)
        return (weights.to(race.dtype) / race).argmax(dim=1)

    def draw_device(self, like: torch.Tensor) -> torch.device:
        """Where random draws happen: on the generator's own device (a CPU generator cannot fill a CUDA tensor), else
        on `like`'s."""
        return self.generator.device if self.generator is not None else like.device

    @staticmethod
    def partners(anchors: torch.Tensor) -> torch.Tensor:
        """Index 2i+1 for anchor 2i: the SPC-2 positive."""
        return anchors + 1

    @staticmethod
    def everything(like: torch.Tensor) -> torch.Tensor:
        """All-True mask of the same shape: the last-resort "uniform over the whole batch" fallback."""
        return torch.ones_like(like, dtype=torch.bool)
