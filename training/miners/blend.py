"""Blend miner (B): Softhard's triplet for most anchors, Random's for a fixed share of them."""

from __future__ import annotations

import torch

from training.miners.base import Miner
from training.miners.random import RandomMiner
from training.miners.softhard import SofthardMiner


class BlendMiner(Miner):
    """As HM's source, the Random share gives the adversary triplets far from the destination to move (robustness)
    and the Softhard share keeps the hard triplets that sharpen the ranking (R@1); docs/method.md#the-products-method
    has the measurements that chose the share. Each anchor draws its miner independently."""

    name = "blend"
    letter = "B"
    random_share = 0.5
    """Probability that an anchor's triplet is Random's."""

    def __init__(self, margin: float = 0.2, reference: bool = False, generator: torch.Generator | None = None) -> None:
        super().__init__(margin, reference, generator)
        self.softhard = SofthardMiner(margin, reference, generator)
        self.random = RandomMiner(margin, reference, generator)

    def mine(
        self, embeddings: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        soft_positives, soft_negatives = self.softhard.mine(embeddings, labels, anchors)
        random_positives, random_negatives = self.random.mine(embeddings, labels, anchors)
        draw = torch.rand(len(anchors), generator=self.generator, device=self.draw_device(anchors))
        takes_random = draw.to(anchors.device) < self.random_share
        return (torch.where(takes_random, random_positives, soft_positives),
                torch.where(takes_random, random_negatives, soft_negatives))
