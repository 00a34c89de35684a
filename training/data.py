"""SPC-2 training batches (docs/method.md#spc-2-batches) and the class-balanced training subset.

An epoch is one pass over all anchors in a seeded random order; each anchor gets a partner drawn uniformly from
all training images of its class (the anchor itself included) and a batch of N pairs is the 2N images
[a0, p0, a1, p1, ...]. The plan of an epoch is a pure function of (seed, epoch), so a resumed run only needs the
epoch and the batch position to continue with exactly the same batches, and every DDP process can compute its
own share without communication.
"""

from __future__ import annotations

import copy
import math
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from retrieval.errors import UserError
from retrieval.images import train_transform
from retrieval.seeding import derive_seed, generator

class SPC2Sampler:
    """Index plans of SPC-2 batches over items 0..len(labels)-1, for one process of `world_size`.

    Every process shuffles the same anchor order and takes every world_size-th anchor starting at its rank
    (the remainder that does not divide evenly is dropped, so all processes run the same number of steps); the last
    batch of an epoch may be smaller than batch_pairs, as in the reference DataLoader.
    """

    def __init__(self, labels: torch.Tensor, batch_pairs: int, seed: int, *, rank: int = 0, world_size: int = 1):
        if batch_pairs < 1:
            raise UserError(f"--batch-pairs must be at least 1, got {batch_pairs}")
        self.batch_pairs = batch_pairs
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        _, classes = torch.unique(labels.cpu(), return_inverse=True)
        self._classes = classes
        self._members = torch.sort(classes, stable=True).indices
        self._counts = torch.bincount(classes)
        self._starts = torch.cumsum(self._counts, 0) - self._counts
        self.anchors_per_process = classes.numel() // world_size
        if self.anchors_per_process == 0:
            raise UserError(f"{classes.numel()} training images cannot be shared by {world_size} processes")

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.anchors_per_process / self.batch_pairs)

    def epoch(self, epoch: int) -> list[torch.Tensor]:
        """This process's batches of `epoch`: LongTensors of 2n item indices ordered [a0, p0, a1, p1, ...]."""
        gen = generator(self.seed, "spc2", epoch)
        total = self._classes.numel()
        anchors = torch.randperm(total, generator=gen)
        cls = self._classes[anchors]
        draw = torch.rand(total, generator=gen, dtype=torch.float64)
        offset = (draw * self._counts[cls]).long()
        partners = self._members[self._starts[cls] + offset]
        pairs = torch.stack([anchors, partners], dim=1)
        mine = pairs[self.rank :: self.world_size][: self.anchors_per_process]
        return list(mine.reshape(-1).split(2 * self.batch_pairs))


class TrainBatches:
    """Turns index plans into (images [2n, C, H, W] in [0,1], labels [2n]) on the training device.

    In-memory datasets are indexed directly (the whole training tensor lives on the device); folder datasets are
    decoded by DataLoader workers, one whole batch per worker task, with the reference's train transform (random crop
    and flip for 224 inputs). Its randomness is seeded by (seed, epoch, batch), so it does not depend on which
    worker decodes the batch and a resumed run sees the same pixels.
    """

    def __init__(
        self, dataset: Dataset, items: torch.Tensor | None, device: torch.device, *, seed: int, num_workers: int
    ):
        """`items` maps plan indices to dataset indices (the training subset); None means all images."""
        self.dataset = dataset
        self.items = items if items is not None else torch.arange(len(dataset))
        self.device = device
        self.seed = seed
        self.num_workers = num_workers
        self.labels = (dataset.labels if items is None else dataset.labels[items]).to(device)
        tensors = dataset.tensors()
        if tensors is not None and items is not None:
            tensors = tensors[items]
        self._images = None if tensors is None else tensors.to(device)

    def iterate(
        self, epoch: int, plan: list[torch.Tensor], start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches start, start+1, ... of the epoch's plan."""
        if self._images is not None:
            for idx in plan[start:]:
                idx = idx.to(self.device, non_blocking=True)
                yield self._images[idx], self.labels[idx]
            return
        batches = _DecodedBatches(self.dataset, self.items, plan, self.seed, epoch)
        loader = DataLoader(
            batches,
            batch_size=None,
            sampler=range(start, len(plan)),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        try:
            for images, labels in loader:
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        except UserError as exc:
            lines = str(exc).strip().splitlines()
            if len(lines) > 1:  # raised in a worker: the message is a traceback ending "module.Class: message"
                raise UserError(lines[-1].split(": ", 1)[-1]) from None
            raise


class _DecodedBatches(Dataset):
    """Item b = batch b of one epoch's plan, decoded (with the train transform) in a worker."""

    def __init__(self, dataset: Dataset, items: torch.Tensor, plan: list[torch.Tensor], seed: int, epoch: int):
        self.dataset = copy.copy(dataset)
        if hasattr(dataset, "transform"):
            self.dataset.transform = train_transform(dataset.image_size)
        self.items = items
        self.plan = plan
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        indices = self.items[self.plan[b]].tolist()
        with torch.random.fork_rng(devices=[]):  # torchvision's random crop/flip draw from the global generator
            torch.manual_seed(derive_seed(self.seed, "augment", self.epoch, b))
            images = torch.stack([self.dataset[i][0] for i in indices])
        return images, self.dataset.labels[indices]
