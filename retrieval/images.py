"""The one image decoder: training folders, indexing and serving all turn bytes into tensors here.

Keeping a single decoder means a gallery image and an uploaded query go through identical pixels -> tensor steps,
and every untrusted input meets the same checks: a format allowlist, a byte limit, and a pixel limit read from the
header before any pixel is decoded (decompression bombs fail in microseconds, not after allocating gigabytes).

Pixels alone do not bound the cost of a decode, so inputs whose cost grows with something else are refused from
their headers too: JPEGs with more than MAX_JPEG_SCANS scans (each scan is a pass over every block), RLE BMPs above
MAX_RLE_PIXELS (PIL decodes RLE in pure Python), and GIF/WebP canvases much larger than the frame they hold. What is
left is bounded by an optional wall-clock deadline, checked between the decoder's input reads and between stages.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import struct
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import transforms

from retrieval.errors import UserError
from retrieval.protocol import protocol_for

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})
DEFAULT_MAX_PIXELS = 40_000_000
MAX_JPEG_SCANS = 64
"""Progressive encoders write about 10 scans (mozjpeg's scan optimisation up to ~20); more is a cost attack."""
MAX_RLE_PIXELS = 1 << 20
"""PIL's RLE BMP decoder runs in Python at about 0.3 us a pixel: 1 MP costs ~0.3 s."""
MAX_CANVAS_TO_FRAME = 16
"""An animation canvas may exceed its first frame's area this many times (beyond a small canvas, see below)."""
SMALL_CANVAS = 1 << 16
DECODE_BLOCK = 16 << 10
"""Bytes handed to the decoder per read: the deadline is checked this often."""

_HIGH_DEPTH_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}
"""Full-scale value of each high-bit-depth mode; PIL's own convert('L') would clip these instead of scaling."""

Source = bytes | str | os.PathLike

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error)
"""What PIL raises on malformed input (its plugins are not consistent); all of it means a corrupt image."""


class ImageError(UserError):
    """An image that cannot be used; subclasses tell the service which HTTP status to answer."""


class UnsupportedImageFormat(ImageError):
    """A real image in a format outside ALLOWED_FORMATS (HTTP 415)."""


class ImageTooLarge(ImageError):
    """Too many bytes or too many pixels (HTTP 413)."""


class CorruptImage(ImageError):
    """Empty, truncated or not an image at all (HTTP 422)."""


class ImageTooComplex(ImageError):
    """Within the byte and pixel limits, but built to be expensive to decode (HTTP 413)."""


class DecodeTimeLimit(ImageError):
    """Decoding ran past its deadline (HTTP 422)."""


def decode_image(
    source: Source,
    *,
    size: int,
    channels: int,
    max_bytes: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    deadline: float | None = None,
) -> torch.Tensor:
    """Decode, orient, convert and eval-transform one image into float32 [channels, size, size] in [0, 1].

    `deadline` (time.monotonic()) bounds the whole decode: DecodeTimeLimit once it passes."""
    img = open_image(source, channels=channels, max_bytes=max_bytes, max_pixels=max_pixels, deadline=deadline)
    tensor = eval_transform(size)(img)
    _check_deadline(deadline)
    return tensor


def open_image(
    source: Source,
    *,
    channels: int,
    max_bytes: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    deadline: float | None = None,
) -> Image.Image:
    """Checked, decoded, EXIF-oriented PIL image in mode 'L' (channels=1) or 'RGB' (channels=3).

    Exposed so that training can apply its own augmentation (`train_transform`) to the same decoded pixels.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    name, data = _read(source, max_bytes)
    _check_cost_from_bytes(name, data, max_pixels)
    img = _open_checked(name, data, max_pixels, deadline)
    try:
        img.load()
        _check_deadline(deadline)
        img = ImageOps.exif_transpose(img)
        _check_deadline(deadline)
        return _to_mode(img, "L" if channels == 1 else "RGB")
    except _DECODE_ERRORS as exc:
        raise CorruptImage(f"{name}: cannot decode image ({_one_line(exc)})") from None


@functools.lru_cache(maxsize=8)
def eval_transform(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """The 224x224 protocol's test transform Resize(256,256) + CenterCrop(224) + ToTensor, scaled to `size`;
    under the 28x28 protocol (retrieval.protocol) a direct resize, without a crop."""
    if not protocol_for(size).crop:
        return transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
    resized = round(size * 256 / 224)
    return transforms.Compose(
        [transforms.Resize((resized, resized)), transforms.CenterCrop(size), transforms.ToTensor()]
    )


def train_transform(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """The 224x224 protocol's train transform: Resize(256,256) + RandomCrop(224) + RandomHorizontalFlip(0.5) +
    ToTensor, scaled to `size`."""
    if not protocol_for(size).crop:
        return eval_transform(size)  # the 28x28 protocol uses no augmentation
    resized = round(size * 256 / 224)
    return transforms.Compose(
        [
            transforms.Resize((resized, resized)),
            transforms.RandomCrop(size),
            transforms.RandomHorizontalFlip(0.5),
            transforms.ToTensor(),
        ]
    )


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_image_file(path: Path) -> bool:
    """Whether a directory entry looks like an image this decoder accepts (by suffix; hidden files never)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def _read(source: Source, max_bytes: int | None) -> tuple[str, bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, data = "image", bytes(source)
    else:
        name = str(source)
        data = _read_file(Path(source), max_bytes)
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLarge(f"{name}: {len(data)} bytes is more than the limit of {max_bytes}")
    if not data:
        raise CorruptImage(f"{name}: empty file (0 bytes)")
    return name, data


def _read_file(path: Path, max_bytes: int | None) -> bytes:
    """File bytes; the size is checked on the directory entry first so an oversized file is never read."""
    try:
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise ImageTooLarge(f"{path}: file is larger than {max_bytes} bytes")
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such image file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read image file ({exc.strerror or type(exc).__name__})") from None


class _DeadlineReader(io.BytesIO):
    """The decoder's input: every read checks the deadline, so a decode stops within one DECODE_BLOCK of work."""

    def __init__(self, data: bytes, deadline: float | None) -> None:
        super().__init__(data)
        self.deadline = deadline

    def read(self, size: int | None = -1) -> bytes:
        _check_deadline(self.deadline)
        return super().read(size)


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DecodeTimeLimit("image: decoding took longer than the time limit")


def _check_cost_from_bytes(name: str, data: bytes, max_pixels: int | None) -> None:
    """Refuse what is expensive before PIL sees it (WebP allocates its canvas as soon as it is opened)."""
    if data.startswith(b"\xff\xd8"):
        # 0xFF in entropy-coded data is always stuffed (FF 00), so FF DA only appears as a start-of-scan marker
        # (or inside an APP/COM payload): the count is an upper bound of the scans.
        scans = data.count(b"\xff\xda")
        if scans > MAX_JPEG_SCANS:
            raise ImageTooComplex(f"{name}: JPEG with {scans} scans (at most {MAX_JPEG_SCANS})")
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP" and data[12:16] == b"VP8X" and len(data) >= 30:
        canvas = (int.from_bytes(data[24:27], "little") + 1) * (int.from_bytes(data[27:30], "little") + 1)
        if max_pixels is not None and canvas > max_pixels:
            raise ImageTooLarge(f"{name}: WebP canvas of {canvas} pixels is more than the limit of {max_pixels}")
        frame = _first_webp_frame_area(data) if data[20] & 0x02 else None  # 0x02: animation flag
        _check_canvas(name, canvas, frame)


def _first_webp_frame_area(data: bytes) -> int | None:
    """Area of the first ANMF frame of an animated WebP (RIFF chunks: 4-byte tag, little-endian size, padded)."""
    pos = 12
    while pos + 8 <= len(data):
        tag, length = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if tag == b"ANMF" and pos + 20 <= len(data):
            width = int.from_bytes(data[pos + 14:pos + 17], "little") + 1
            height = int.from_bytes(data[pos + 17:pos + 20], "little") + 1
            return width * height
        pos += 8 + length + (length & 1)
    return None


def _check_canvas(name: str, canvas: int, frame: int | None) -> None:
    if frame is not None and canvas > SMALL_CANVAS and canvas > MAX_CANVAS_TO_FRAME * frame:
        raise ImageTooComplex(f"{name}: animation canvas of {canvas} pixels around a first frame of {frame} "
                              f"(at most {MAX_CANVAS_TO_FRAME}x the frame)")


def _check_cost_from_header(name: str, img: Image.Image) -> None:
    """Cost checks that need PIL's parsed header: RLE BMP size, GIF logical screen vs its first frame."""
    width, height = img.size
    decoder = img.tile[0][0] if img.tile else None
    if decoder == "bmp_rle" and width * height > MAX_RLE_PIXELS:
        raise ImageTooComplex(f"{name}: RLE-compressed BMP of {width}x{height} pixels "
                              f"(at most {MAX_RLE_PIXELS} pixels for RLE)")
    if img.format == "GIF" and img.tile:
        x0, y0, x1, y1 = img.tile[0][1]
        _check_canvas(name, width * height, max(0, x1 - x0) * max(0, y1 - y0))


def _open_checked(name: str, data: bytes, max_pixels: int | None, deadline: float | None = None) -> Image.Image:
    """Parse only the header (PIL opens lazily) and enforce the allowlist and the pixel and cost limits."""
    try:
        img = Image.open(_DeadlineReader(data, deadline), formats=sorted(ALLOWED_FORMATS))
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{name}: image dimensions exceed the decompression-bomb limit") from None
    except UnidentifiedImageError:
        raise _unidentified(name, data) from None
    except _DECODE_ERRORS as exc:
        raise CorruptImage(f"{name}: cannot read image header ({_one_line(exc)})") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise CorruptImage(f"{name}: image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(f"{name}: {width}x{height} pixels is more than the limit of {max_pixels}")
    _check_cost_from_header(name, img)
    img.decodermaxblock = DECODE_BLOCK
    return img


def _unidentified(name: str, data: bytes) -> ImageError:
    """Tell a real image in a disallowed format (415) from bytes that are no image at all (422).

    The second open is header-only (lazy) and its result is never decoded.
    """
    try:
        fmt = Image.open(io.BytesIO(data)).format
    except Exception:  # any failure here just means "not an image"
        fmt = None
    if fmt:
        allowed = ", ".join(sorted(ALLOWED_FORMATS))
        return UnsupportedImageFormat(f"{name}: image format {fmt} is not supported (allowed: {allowed})")
    return CorruptImage(f"{name}: not a recognisable image")


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL mode to 'L' or 'RGB': transparency is composited on white, 16-bit/float is rescaled."""
    if img.mode in _HIGH_DEPTH_SCALE:
        scaled = np.asarray(img, dtype=np.float64) * (255.0 / _HIGH_DEPTH_SCALE[img.mode])
        img = Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img.alpha_composite(rgba)
    if img.mode != mode:
        img = img.convert(mode)
    return img


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
