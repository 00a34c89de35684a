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

    def mine(
        self, embeddings: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        miners = (cls(self.margin, self.reference, self.generator) for cls in (SofthardMiner, RandomMiner))
        (soft_p, soft_n), (random_p, random_n) = (miner.mine(embeddings, labels, anchors) for miner in miners)
        device = self.generator.device if self.generator is not None else embeddings.device
        draw = torch.rand(len(anchors), generator=self.generator, device=device).to(anchors.device)
        chosen = draw < self.random_share
        return torch.where(chosen, random_p, soft_p), torch.where(chosen, random_n, soft_n)
