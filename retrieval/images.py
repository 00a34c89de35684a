"""The one image decoder: training folders, indexing and serving all turn bytes into tensors here.

Keeping a single decoder means a gallery image and an uploaded query go through identical pixels -> tensor steps,
and every untrusted input meets the same checks: a format allowlist, a byte limit, and a pixel limit read from the
header before any pixel is decoded (decompression bombs fail in microseconds, not after allocating gigabytes).

The format is identified once, from the file's first bytes, among the allowed formats, and only that format's
Pillow plugin ever sees the data: anything else is refused (415) before any plugin runs (trying every plugin on a
10 MiB file that is no image took seconds).

Pixels alone do not bound the cost of a decode, so inputs whose cost grows with something else are refused from
their headers too: JPEGs with more than MAX_JPEG_SCANS scans (each scan is a pass over every block), RLE BMPs above
MAX_RLE_PIXELS (PIL decodes RLE in pure Python), and GIF/WebP canvases much larger than the frame they hold. PNG is
the one allowed format whose metadata is compressed (zTXt, iTXt, iCCP), so its inflated text and ICC profile are
capped far below Pillow's defaults (MAX_METADATA_CHUNK, MAX_METADATA_BYTES); other formats store metadata as sent,
bounded by the byte cap. What is left is bounded by an optional wall-clock deadline, checked between the decoder's
input reads and between stages (the service also runs the decoder in processes it can kill: serve/decoding.py).

Only PIL and numpy are imported at module level, so a decoding process starts without torch.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from retrieval.errors import UserError
from retrieval.protocol import FILE_MAX_PIXELS, protocol_for

if TYPE_CHECKING:
    import torch

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})
MAX_JPEG_SCANS = 64
"""Progressive encoders write about 10 scans (mozjpeg's scan optimisation up to ~20); more is a cost attack."""
MAX_RLE_PIXELS = 1 << 20
"""PIL's RLE BMP decoder runs in Python at about 0.3 us a pixel: 1 MP costs ~0.3 s."""
MAX_CANVAS_TO_FRAME = 16
"""An animation canvas may exceed its first frame's area this many times (beyond a small canvas, see below)."""
SMALL_CANVAS = 1 << 16
DECODE_BLOCK = 16 << 10
"""Bytes handed to the decoder per read: the deadline is checked this often."""
MAX_METADATA_CHUNK = 256 << 10
"""Largest inflated PNG text or ICC chunk (Pillow: 1 MiB); real ICC profiles are a few KiB, rarely 100s."""
MAX_METADATA_BYTES = 1 << 20
"""All inflated PNG text of one image (Pillow: 64 MiB, which a 74 KB file reaches)."""
PngImagePlugin.MAX_TEXT_CHUNK = MAX_METADATA_CHUNK
PngImagePlugin.MAX_TEXT_MEMORY = MAX_METADATA_BYTES
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"), (b"\xff\xd8\xff", 0, "JPEG"), (b"GIF87a", 0, "GIF"), (b"GIF89a", 0, "GIF"),
    (b"WEBP", 8, "WEBP"), (b"BM", 0, "BMP"),
)
"""(signature, offset, format): each allowed format's magic bytes (WebP: "WEBP" after the RIFF header)."""

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


def decode_image(source: Source, **options) -> torch.Tensor:
    """decode_array's pixels as a tensor: float32 [channels, size, size] in [0, 1]."""
    import torch

    return torch.from_numpy(decode_array(source, **options)[0])


def decode_array(
    source: Source,
    *,
    size: int,
    channels: int,
    max_bytes: int | None = None,
    max_pixels: int | None = FILE_MAX_PIXELS,
    deadline: float | None = None,
) -> tuple[np.ndarray, int]:
    """Decode, orient, convert and eval-transform one image into float32 [channels, size, size] in [0, 1], and its
    pixel count (what it cost); no torch, so that the service's decoding processes stay small.

    `deadline` (time.monotonic()) bounds the whole decode: DecodeTimeLimit once it passes."""
    img = open_image(source, channels=channels, max_bytes=max_bytes, max_pixels=max_pixels, deadline=deadline)
    pixels = eval_array(img, size)
    _check_deadline(deadline)
    return pixels, img.width * img.height


def open_image(
    source: Source,
    *,
    channels: int,
    max_bytes: int | None = None,
    max_pixels: int | None = FILE_MAX_PIXELS,
    deadline: float | None = None,
) -> Image.Image:
    """Checked, decoded, EXIF-oriented PIL image in mode 'L' (channels=1) or 'RGB' (channels=3).

    Exposed so that training can apply its own augmentation (`train_transform`) to the same decoded pixels.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    name, data = _read(source, max_bytes)
    fmt = sniff_format(data)
    if fmt is None:
        allowed = ", ".join(sorted(ALLOWED_FORMATS))
        raise UnsupportedImageFormat(f"{name}: not an image in an allowed format by its first bytes (allowed: {allowed})")
    _check_cost_from_bytes(name, data, max_pixels)
    img = _open_checked(name, fmt, data, max_pixels, deadline)
    try:
        img.load()
        _check_deadline(deadline)
        img = ImageOps.exif_transpose(img)
        _check_deadline(deadline)
        return _to_mode(img, "L" if channels == 1 else "RGB")
    except _DECODE_ERRORS as exc:
        raise _decode_error(name, "cannot decode image", exc) from None


def sniff_format(data: bytes) -> str | None:
    """The allowed format whose magic bytes `data` starts with, or None."""
    return next((fmt for magic, at, fmt in _MAGIC if data.startswith(magic, at)), None)


def eval_transform(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """eval_array as a tensor: the transform of every image that is embedded rather than trained on."""
    import torch

    return lambda img: torch.from_numpy(eval_array(img, size))


def eval_array(img: Image.Image, size: int) -> np.ndarray:
    """The 224x224 protocol's test transform Resize(256,256) + CenterCrop(224) + ToTensor, scaled to `size`; under
    the 28x28 protocol (retrieval.protocol) a direct resize, without a crop. Written with PIL and numpy as
    torchvision does it on PIL images (bilinear, antialiased resize; rounded centre crop; /255), pixel for pixel,
    so that decoding needs no torch."""
    protocol = protocol_for(size)
    if protocol.resize_ratio is None:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    else:
        resized = protocol.resized_side(size)
        offset = int(round((resized - size) / 2.0))
        img = img.resize((resized, resized), Image.Resampling.BILINEAR)
        img = img.crop((offset, offset, offset + size, offset + size))
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array.transpose(2, 0, 1)).astype(np.float32) / np.float32(255)


def train_transform(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """The 224x224 protocol's train transform: Resize(256,256) + RandomCrop(224) + RandomHorizontalFlip(0.5) +
    ToTensor, scaled to `size`."""
    from torchvision import transforms

    protocol = protocol_for(size)
    if protocol.resize_ratio is None:
        return eval_transform(size)  # the 28x28 protocol uses no augmentation
    resized = protocol.resized_side(size)
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


def _open_checked(name: str, fmt: str, data: bytes, max_pixels: int | None,
                  deadline: float | None = None) -> Image.Image:
    """Parse only the header (PIL opens lazily) with the one plugin of `fmt`, and enforce the pixel and cost limits."""
    try:
        img = Image.open(_DeadlineReader(data, deadline), formats=[fmt])
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{name}: image dimensions exceed the decompression-bomb limit") from None
    except UnidentifiedImageError:
        raise CorruptImage(f"{name}: starts like a {fmt} file but its header cannot be read") from None
    except _DECODE_ERRORS as exc:
        raise _decode_error(name, "cannot read image header", exc) from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise CorruptImage(f"{name}: image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(f"{name}: {width}x{height} pixels is more than the limit of {max_pixels}")
    _check_cost_from_header(name, img)
    img.decodermaxblock = DECODE_BLOCK
    return img


def _decode_error(name: str, what: str, exc: BaseException) -> ImageError:
    """Pillow's error as ours: its PNG metadata limits (ValueError naming MAX_TEXT_*) are a cost refusal (413), the
    rest a corrupt image (422)."""
    if isinstance(exc, ValueError) and "MAX_TEXT" in str(exc):
        return ImageTooComplex(f"{name}: PNG text or ICC metadata inflates past {MAX_METADATA_CHUNK} bytes a chunk "
                               f"or {MAX_METADATA_BYTES} in all")
    return CorruptImage(f"{name}: {what} ({_one_line(exc)})")


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
