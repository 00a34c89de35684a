"""Cars196 (Stanford Cars, the `car_ims.tgz` + `cars_annos.mat` release): classes 1-98 train, 99-196 test (the paper's split).

ROOT holds cars_annos.mat and car_ims/; the .mat file lists every image with its class, and the dataset's own
train/test flag is ignored because retrieval splits by class; its `class_names` (where present) name the classes.
Read with scipy, which scikit-learn already requires.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.datasets.base import FileImageDataset
from retrieval.datasets.tables import check_first_image, require_file
from retrieval.errors import UserError

LAST_TRAIN_CLASS = 98


def load_cars(root: str | Path, split: str, *, image_size: int = 224, channels: int = 3) -> FileImageDataset:
    from scipy.io import loadmat  # heavy import, only needed here

    root = Path(root)
    annos_path = require_file(root / "cars_annos.mat", "Cars196")
    try:
        mat = loadmat(annos_path, squeeze_me=True)
        entries = [(str(a["relative_im_path"]), int(a["class"])) for a in mat["annotations"].ravel()]
        names = mat.get("class_names")
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise UserError(f"{annos_path}: not a Cars196 annotation file ({exc})") from None
    paths, labels = [], []
    for relative, cls in entries:
        if (cls <= LAST_TRAIN_CLASS) == (split == "train"):
            paths.append(root / relative)
            labels.append(cls)
    check_first_image(paths, annos_path, split)
    return FileImageDataset(
        paths, labels, image_size=image_size, channels=channels,
        class_names=None if names is None else dict(enumerate(map(str, np.atleast_1d(names)), start=1)),
    )
