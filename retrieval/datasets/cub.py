"""CUB-200-2011 (standard release layout): classes 1-100 train, 101-200 test (the paper's split).

ROOT is the CUB_200_2011 folder (images.txt, image_class_labels.txt, images/) or its parent. Class names come from
classes.txt ("1 001.Black_footed_Albatross" names class 1 "Black footed Albatross") when it is there.
"""

from __future__ import annotations

from pathlib import Path

from retrieval.datasets.base import FileImageDataset
from retrieval.datasets.tables import check_first_image, read_rows, require_file, to_int
from retrieval.errors import UserError

LAST_TRAIN_CLASS = 100


def load_cub(root: str | Path, split: str, *, image_size: int = 224, channels: int = 3) -> FileImageDataset:
    root = Path(root)
    base = root if (root / "images.txt").is_file() else root / "CUB_200_2011"
    images_txt = require_file(base / "images.txt", "CUB_200_2011")
    labels_txt = require_file(base / "image_class_labels.txt", "CUB_200_2011")
    class_of = {image_id: to_int(cls, labels_txt) for image_id, cls in read_rows(labels_txt, 2)}
    paths, labels = [], []
    for image_id, relative in read_rows(images_txt, 2):
        cls = class_of.get(image_id)
        if cls is None:
            raise UserError(f"{labels_txt}: no class for image id {image_id} of {images_txt}")
        if (cls <= LAST_TRAIN_CLASS) == (split == "train"):
            paths.append(base / "images" / relative)
            labels.append(cls)
    check_first_image(paths, images_txt, split)
    return FileImageDataset(paths, labels, image_size=image_size, channels=channels, class_names=_names(base))


def _names(base: Path) -> dict[int, str] | None:
    classes_txt = base / "classes.txt"
    if not classes_txt.is_file():
        return None
    return {
        to_int(cls, classes_txt): folder.partition(".")[2].replace("_", " ") or folder
        for cls, folder in read_rows(classes_txt, 2)
    }
