"""Write scikit-learn's bundled handwritten digits (1,797 8x8 images, offline) as a `folder` dataset of 28x28 PNGs.

    python scripts/digits_folder.py runs/digits       # then: --dataset folder --data-root runs/digits

The `folder` reader's zero-shot split applies: digits 0-4 train, 5-9 test (about 900 images each).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write(root: Path) -> int:
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        directory = root / f"digit{label}"
        directory.mkdir(parents=True, exist_ok=True)
        pixels = Image.fromarray((image * (255 / 16)).astype(np.uint8)).resize((28, 28), Image.BILINEAR)
        pixels.save(directory / f"{i:04d}.png")
    return len(digits.images)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    print(f"wrote {write(parser.parse_args().root)} images")
