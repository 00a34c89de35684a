"""Small preview images of gallery items, stored in the index generation so a client can see what a hit is.

Storage is one blob (the encoded images back to back) plus an offsets array (n + 1 int64): a reader memory-maps the
blob and slices one item, so a million previews never have to sit in RAM, and an open map stays valid after a newer
generation prunes the file.

A preview is the decoded image the model embedded (mode L or RGB, before the eval resize and crop), shrunk to at
most MAX_SIDE pixels on its long side. Small ones (the 28x28 MNISTs) stay lossless PNG, a few hundred bytes each;
larger ones are JPEG, which is several times smaller than PNG for photographs at this size.
"""

from __future__ import annotations

import io
import mmap
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from retrieval.atomic import atomic_path
from retrieval.errors import UserError

MAX_SIDE = 128
PNG_MAX_PIXELS = 64 * 64
"""Previews with at most this many pixels are stored as PNG (exact pixels, tiny); larger ones as JPEG."""
JPEG_QUALITY = 85
BLOB_FILE = "thumbnails.bin"
OFFSETS_FILE = "thumbnails.offsets.npy"
FILES = (BLOB_FILE, OFFSETS_FILE)

_MEDIA_TYPES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))


def encode(image: Image.Image) -> bytes:
    """A bounded preview of a decoded image (L or RGB): PNG when small, JPEG otherwise."""
    preview = image.copy()
    preview.thumbnail((MAX_SIDE, MAX_SIDE))  # never enlarges; bicubic after a cheap integer reduction
    buffer = io.BytesIO()
    if preview.width * preview.height <= PNG_MAX_PIXELS:
        preview.save(buffer, format="PNG")
    else:
        preview.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


def encode_pixels(pixels: np.ndarray) -> bytes:
    """A preview of uint8 pixels [1, H, W] or [3, H, W] (the in-memory datasets)."""
    image = Image.fromarray(pixels[0]) if pixels.shape[0] == 1 else Image.fromarray(pixels.transpose(1, 2, 0))
    return encode(image)


def media_type(data: bytes) -> str:
    """The content type of a stored preview, read from its signature."""
    for signature, kind in _MEDIA_TYPES:
        if data.startswith(signature):
            return kind
    return "application/octet-stream"


class Thumbnails:
    """Previews of items 0..n-1 (row i <-> FAISS id i), over one contiguous buffer."""

    def __init__(self, blob: bytes | bytearray | mmap.mmap, offsets: np.ndarray) -> None:
        offsets = np.asarray(offsets, dtype=np.int64)
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(blob) or (
            np.diff(offsets) < 0
        ).any():
            raise UserError("thumbnail offsets do not describe the thumbnail blob (truncated or modified)")
        self._blob, self._offsets = blob, offsets

    @classmethod
    def from_items(cls, items: Sequence[bytes]) -> Thumbnails:
        offsets = np.zeros(len(items) + 1, np.int64)
        np.cumsum([len(item) for item in items], out=offsets[1:])
        return cls(b"".join(items), offsets)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @property
    def nbytes(self) -> int:
        return int(self._offsets[-1])

    def get(self, i: int) -> bytes:
        """The encoded preview of item i; IndexError outside 0..n-1 (negative ids are not items)."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        return bytes(self._blob[self._offsets[i] : self._offsets[i + 1]])

    def extended(self, items: Sequence[bytes]) -> Thumbnails:
        """These previews followed by `items` (an --append); the blob is copied once into memory."""
        more = Thumbnails.from_items(items)
        offsets = np.concatenate([self._offsets, more._offsets[1:] + self.nbytes])
        return Thumbnails(bytes(self._blob) + more._blob, offsets)

    def write(self, directory: Path) -> None:
        with atomic_path(directory / BLOB_FILE) as tmp:
            tmp.write_bytes(self._blob)
        with atomic_path(directory / OFFSETS_FILE) as tmp, open(tmp, "wb") as fh:
            np.save(fh, self._offsets, allow_pickle=False)

    @classmethod
    def load(cls, directory: Path) -> Thumbnails:
        """Map the blob read-only; UserError when the files are unreadable or disagree."""
        try:
            offsets = np.load(directory / OFFSETS_FILE, allow_pickle=False)
            with open(directory / BLOB_FILE, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                blob = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except (OSError, ValueError) as exc:
            raise UserError(f"thumbnails in {directory} are unreadable: {exc}") from None
        return cls(blob, offsets)
