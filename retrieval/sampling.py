"""Seeded, class-balanced samples of a labelled split: training and validation subsets, evaluation queries.

The first N images of a split are often one class (folder datasets are sorted by class; CUB, Cars and SOP list
images class by class), so every subset the project draws is spread over the classes instead.
"""

from __future__ import annotations

import torch

from retrieval.errors import UserError
from retrieval.seeding import generator


def balanced_subset(labels: torch.Tensor, n: int, seed: int, *, purpose: str = "train-subset") -> torch.Tensor:
    """Sorted indices of n items drawn without replacement, spread as evenly as possible over the classes.

    Each class is shuffled; items are then taken round-robin (first item of every class, second of every class,
    ...) with the classes in a seeded order, so small classes simply run out and the rest fill the gap.
    """
    total = labels.numel()
    if not 0 < n <= total:
        raise UserError(f"a {purpose} must hold between 1 and {total} images, got {n}")
    gen = generator(seed, purpose)
    _, classes = torch.unique(labels, return_inverse=True)
    num_classes = int(classes.max()) + 1
    order = torch.randperm(total, generator=gen)
    class_rank = torch.randperm(num_classes, generator=gen)
    shuffled = classes[order]
    # position of each shuffled item within its class: stable sort by class, then count up inside each run
    by_class = torch.sort(shuffled, stable=True).indices
    counts = torch.bincount(shuffled, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.empty(total, dtype=torch.long)
    position[by_class] = torch.arange(total) - torch.repeat_interleave(starts, counts)
    key = position * num_classes + class_rank[shuffled]
    chosen = order[torch.argsort(key)[:n]]
    return torch.sort(chosen).values
