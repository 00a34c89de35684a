"""ImageDataset: the one dataset shape every consumer (training, metrics, indexing) relies on.

Two storage kinds cover all datasets: images held in memory as uint8 (the MNISTs, fast whole-set tensors) and image
files decoded on access through retrieval.images (everything else).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from retrieval.errors import UserError
from retrieval.images import eval_transform, open_image


class ImageDataset(Dataset):
    """Images in [0, 1] with integer labels 0..num_classes-1 (contiguous within the split) and, where the dataset's
    files name them, `classes`: the name of each label (None for a label without one)."""

    labels: torch.Tensor
    channels: int
    image_size: int
    num_classes: int
    classes: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def tensors(self) -> torch.Tensor | None:
        """All images as one float tensor [N, C, H, W] when the set lives in memory, else None."""
        return None

    def source(self, i: int) -> str:
        raise NotImplementedError

    def class_name(self, label: int) -> str | None:
        """The name of a label, None where the dataset does not name it."""
        return self.classes[label] if self.classes is not None else None


class TensorImageDataset(ImageDataset):
    """uint8 images [N, H, W] or [N, C, H, W] held in memory; sources read 'name:split:index'."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        source_prefix: str,
        class_names: Mapping[int, str] | None = None,
    ) -> None:
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8, not {images.dtype}")
        self._images = images if images.dim() == 4 else images.unsqueeze(1)
        self.labels, self.num_classes, self.classes = labelled(labels, class_names)
        if len(self._images) != len(self.labels):
            raise UserError(f"{source_prefix}: {len(self._images)} images but {len(self.labels)} labels")
        self.channels = self._images.shape[1]
        self.image_size = self._images.shape[-1]
        self._prefix = source_prefix
        self._float: torch.Tensor | None = None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._images[i].float().div_(255), int(self.labels[i])

    def tensors(self) -> torch.Tensor:
        """Float copy made once and cached (40 MB for 10k 28x28 images); callers must not modify it in place."""
        if self._float is None:
            self._float = self._images.float().div_(255)
        return self._float

    def source(self, i: int) -> str:
        return f"{self._prefix}:{i}"


class FileImageDataset(ImageDataset):
    """Image files decoded on access; `transform` maps the decoded PIL image to a tensor (eval transform by default).

    Training may swap in `retrieval.images.train_transform(size)` for the reference's augmentation.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int] | torch.Tensor,
        *,
        image_size: int = 224,
        channels: int = 3,
        class_names: Mapping[int, str] | None = None,
    ) -> None:
        if not paths:
            raise UserError("dataset split has no images")
        self.paths = [Path(p) for p in paths]
        self.labels, self.num_classes, self.classes = labelled(torch.as_tensor(labels), class_names)
        self.image_size = image_size
        self.channels = channels
        self.transform: Callable[[Image.Image], torch.Tensor] = eval_transform(image_size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = open_image(self.paths[i], channels=self.channels)
        return self.transform(img), int(self.labels[i])

    def source(self, i: int) -> str:
        return str(self.paths[i])


def labelled(
    class_ids: torch.Tensor, names: Mapping[int, str] | None
) -> tuple[torch.Tensor, int, list[str | None] | None]:
    """Map arbitrary class ids onto labels 0..K-1 in sorted id order, so K is the split's class count; the names
    known by class id become the name of each label."""
    ids, inverse = torch.unique(class_ids.long(), sorted=True, return_inverse=True)
    classes = None if names is None else [names.get(i) for i in ids.tolist()]
    return inverse.long(), len(ids), classes
