"""Stanford Online Products: Ebay_train.txt / Ebay_test.txt (image_id class_id super_class_id path).

ROOT is the Stanford_Online_Products folder; paths in the lists are relative to it. Products have no names in these
files, only their category's folder, so class 11319 in chair_final/ is named "chair #11319".
"""

from __future__ import annotations

from pathlib import Path

from retrieval.datasets.base import FileImageDataset
from retrieval.datasets.tables import check_first_image, read_rows, require_file, to_int


def load_sop(root: str | Path, split: str, *, image_size: int = 224, channels: int = 3) -> FileImageDataset:
    root = Path(root)
    listing = require_file(root / f"Ebay_{split}.txt", "Stanford_Online_Products")
    rows = read_rows(listing, 4, header=True)
    paths = [root / path for _, _, _, path in rows]
    labels = [to_int(class_id, listing) for _, class_id, _, _ in rows]
    names = {cls: f"{path.split('/')[0].removesuffix('_final')} #{cls}" for cls, (*_, path) in zip(labels, rows)}
    check_first_image(paths, listing, split)
    return FileImageDataset(paths, labels, image_size=image_size, channels=channels, class_names=names)
