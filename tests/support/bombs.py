"""Hostile uploads built in memory (no committed binaries): images that are small on the wire but expensive to
decode, and headers that lie about their size. Shared by the hostile-input tests and benchmarks/abuse_bench.py."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def progressive_jpeg_bomb(side: int = 4096, repeats: int = 2000) -> bytes:
    """A progressive JPEG whose last (refinement) scan is repeated `repeats` times: each copy costs a pass over every
    block, and libjpeg only warns about the bogus progression."""
    pixels = np.full((side, side), 128, dtype=np.uint8)  # flat: every AC scan is a few bytes of end-of-band runs
    data = _encoded(Image.fromarray(pixels, mode="L"), "JPEG", progressive=True, quality=90)
    last_scan = data.rindex(b"\xff\xda")
    scan = data[last_scan:-2]  # up to (not including) EOI
    return data[:-2] + scan * repeats + b"\xff\xd9"


def rle_bmp_bomb(width: int = 4096, height: int = 4096) -> bytes:
    """An RLE8 BMP of `width` x `height` whose rows are one pixel and an end-of-line code: 4 bytes a
    row that PIL's pure-Python RLE decoder pads one byte at a time."""
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    pixels = b"\x01\x00\x00\x00" * height + b"\x00\x01"  # (1 pixel, end of line) per row, end of bitmap
    offset = 14 + 40 + len(palette)
    header = struct.pack("<2sIHHI", b"BM", offset + len(pixels), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return header + info + palette + pixels


def animated_webp_canvas_bomb(canvas: int = 4096, frame: int = 1) -> bytes:
    """An animated WebP of two `frame` x `frame` frames on a `canvas` x `canvas` canvas (VP8X + ANIM + ANMF)."""
    tiny = _encoded(Image.new("RGB", (frame, frame), (10, 20, 30)), "WEBP", lossless=True)
    vp8l = tiny[12:]  # the VP8L chunk of the one-frame file (header stripped)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return kind + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")

    def u24(value: int) -> bytes:
        return struct.pack("<I", value)[:3]

    vp8x = chunk(b"VP8X", bytes((0x02, 0, 0, 0)) + u24(canvas - 1) + u24(canvas - 1))
    anim = chunk(b"ANIM", struct.pack("<IH", 0, 0))
    anmf = chunk(b"ANMF", u24(0) + u24(0) + u24(frame - 1) + u24(frame - 1) + u24(100) + b"\0" + vp8l)
    body = b"WEBP" + vp8x + anim + anmf + anmf
    return b"RIFF" + struct.pack("<I", len(body)) + body


def gif_canvas_bomb(canvas: int = 4096, frame: int = 1) -> bytes:
    """A GIF whose logical screen is `canvas` x `canvas` around a `frame` x `frame` image."""
    image = _encoded(Image.new("L", (frame, frame), 0), "GIF")
    return image[:6] + struct.pack("<HH", canvas, canvas) + image[10:]


def png_text_bomb(chunks: int = 72, inflated: int = 1 << 20) -> bytes:
    """A 16x16 PNG (74 KB) with `chunks` zTXt chunks that each inflate to `inflated` bytes (about 1 KB each on the
    wire): Pillow's default limits let it inflate 64 MiB of text before refusing it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = _encoded(Image.new("L", (16, 16), 128), "PNG")
    text = chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"a" * inflated, 9))
    return png[:33] + text * chunks + png[33:]  # after the signature (8) and IHDR (25)


def costly_jpeg(side: int = 2048, scans: int = 54) -> bytes:
    """A progressive JPEG within every cost cap (scans under MAX_JPEG_SCANS, pixels under the 28x28 model's cap) that
    still takes about 0.3 s to decode on one core: what a batch of small files can multiply."""
    return progressive_jpeg_bomb(side, scans)


def eps_like(size: int = 10 << 20) -> bytes:
    """`size` bytes of PostScript comment lines: no allowed format, but Pillow's EPS plugin, tried when every plugin
    is, reads it line by line in Python for seconds."""
    head = b"%!PS-Adobe-3.0 EPSF-3.0\n"
    return head + b"%%Comment: x\n" * ((size - len(head)) // 13)
