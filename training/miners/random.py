"""Random miner `spc2-random` (R): partner positive, uniform negative."""

from __future__ import annotations

import torch

from training.miners.base import Miner


class RandomMiner(Miner):
    """Negative uniform over the other-label images; uniform over the whole batch if there are none."""

    name = "random"
    letter = "R"

    def mine(
        self, embeddings: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _, different = self.label_masks(labels, anchors)
        negatives = self.sample(self.first_nonempty(different, self.everything(different)))
        return self.partners(anchors), negatives
