"""The one image decoder: formats, modes, orientation, size rules and every rejection path."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.errors import UserError
from retrieval.images import (
    CorruptImage,
    ImageError,
    ImageTooComplex,
    ImageTooLarge,
    UnsupportedImageFormat,
    decode_image,
    eval_transform,
    open_image,
    sha256_bytes,
    train_transform,
)

RED = (1.0, 0.0, 0.0)


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but carries almost no pixel data: a bomb's header, cheaply."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_allowed_formats_decode_to_unit_range_float(fmt):
    data = encode(Image.new("RGB", (40, 30), (255, 0, 0)), fmt)
    x = decode_image(data, size=28, channels=3)
    assert x.shape == (3, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.allclose(x[:, 14, 14], torch.tensor(RED), atol=0.03)


def test_path_and_bytes_give_identical_tensors(tmp_path):
    data = encode(Image.new("RGB", (50, 70), (10, 200, 30)), "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    assert torch.equal(decode_image(path, size=28, channels=3), decode_image(data, size=28, channels=3))
    assert torch.equal(decode_image(str(path), size=28, channels=3), decode_image(data, size=28, channels=3))


def test_channels_one_gives_greyscale_and_size_224_uses_centre_crop():
    img = Image.new("RGB", (300, 300), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 300, 15))  # a white band the 256->224 centre crop removes
    x = decode_image(encode(img, "PNG"), size=224, channels=1)
    assert x.shape == (1, 224, 224)
    assert x.max() == 0.0


def test_small_sizes_resize_directly_without_crop():
    img = Image.new("L", (56, 56), 0)
    img.paste(255, (0, 0, 56, 2))  # top band survives a plain resize to 28
    x = decode_image(encode(img, "PNG"), size=28, channels=1)
    assert x[0, 0].mean() > 0.5  # a 256->224-style crop would have cut the band off entirely


def test_cmyk_jpeg_converts_to_rgb():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=100)
    assert torch.allclose(decode_image(data, size=8, channels=3)[:, 4, 4], torch.tensor(RED), atol=0.03)


def test_16bit_png_is_rescaled_not_clipped():
    img = Image.fromarray(np.full((12, 12), 32896, dtype=np.uint16))  # half of 65535 (= 128 * 257)
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    x = decode_image(data, size=8, channels=1)
    assert torch.allclose(x, torch.full_like(x, 128 / 255))


def test_palette_with_transparency_is_composited_on_white():
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0] + [255, 0, 0] * 255)
    img.paste(1, (0, 0, 10, 5))  # top half red, bottom half transparent black
    x = decode_image(encode(img, "PNG", transparency=0), size=10, channels=3)
    assert torch.allclose(x[:, 2, 5], torch.tensor(RED))
    assert torch.allclose(x[:, 8, 5], torch.ones(3))


@pytest.mark.parametrize("mode,colour", [("RGBA", (0, 0, 0, 0)), ("LA", (0, 0))])
def test_alpha_is_composited_on_white(mode, colour):
    x = decode_image(encode(Image.new(mode, (8, 8), colour), "PNG"), size=8, channels=3)
    assert torch.equal(x, torch.ones(3, 8, 8))


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # stored: red left half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    oriented = open_image(encode(img, "JPEG", exif=exif, quality=95), channels=3)
    assert oriented.size == (20, 40)
    top, bottom = oriented.getpixel((10, 5)), oriented.getpixel((10, 35))
    assert top[0] > 200 and bottom[2] > 200  # red ends up on top


@pytest.mark.parametrize("data", [encode(Image.new("RGB", (4, 4)), "TIFF"), b"definitely not an image"],
                         ids=["tiff", "garbage"])
def test_anything_without_an_allowed_formats_magic_bytes_is_unsupported(data):
    with pytest.raises(UnsupportedImageFormat, match="first bytes"):
        decode_image(data, size=8, channels=3)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x89PNG\r\n\x1a\n and then no chunks",
        encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")[:60],
        encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")[:400],
    ],
    ids=["empty", "png-magic-only", "truncated-png", "truncated-jpeg"],
)
def test_corrupt_inputs_raise_corrupt_image_with_one_line(data):
    with pytest.raises(CorruptImage) as info:
        decode_image(data, size=8, channels=3)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, UserError)


def test_corrupt_file_error_names_the_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nrubbish")
    with pytest.raises(CorruptImage, match="broken.png"):
        decode_image(path, size=8, channels=3)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such image file"):
        decode_image(tmp_path / "nope.png", size=8, channels=3)


@pytest.mark.parametrize("side", [8000, 60000])  # under and over PIL's own bomb threshold
def test_bomb_header_fails_before_decoding(side):
    with pytest.raises(ImageTooLarge):
        decode_image(png_header_only(side, side), size=8, channels=3)


def test_real_image_over_pixel_limit_is_too_large():
    data = encode(Image.new("1", (2000, 1000)), "PNG")  # compresses to a few hundred bytes
    with pytest.raises(ImageTooLarge, match="2000x1000"):
        decode_image(data, size=8, channels=1, max_pixels=1_000_000)
    assert decode_image(data, size=8, channels=1, max_pixels=None).shape == (1, 8, 8)


def test_byte_limit_applies_to_bytes_and_files(tmp_path):
    data = encode(Image.new("RGB", (30, 30)), "BMP")
    path = tmp_path / "a.bmp"
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(ImageTooLarge):
            decode_image(source, size=8, channels=3, max_bytes=len(data) - 1)
        assert decode_image(source, size=8, channels=3, max_bytes=len(data)).shape == (3, 8, 8)


def test_error_classes_share_one_base():
    for cls in (UnsupportedImageFormat, ImageTooLarge, CorruptImage):
        assert issubclass(cls, ImageError) and issubclass(cls, UserError)


def test_train_transform_crops_and_keeps_shape():
    img = Image.new("RGB", (300, 200), (0, 128, 255))
    assert train_transform(224)(img).shape == (3, 224, 224)
    assert torch.equal(train_transform(28)(img), eval_transform(28)(img))


def test_sha256_bytes():
    assert sha256_bytes(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize("chunks, inflated", [(1, 300 << 10), (8, 200 << 10)], ids=["one-chunk", "in-all"])
def test_png_text_is_capped_far_below_pillows_defaults(chunks, inflated):
    """Pillow lets one chunk inflate to 1 MiB and all text to 64 MiB; the decoder allows 256 KiB and 1 MiB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    plain = encode(Image.new("L", (8, 8), 128), "PNG")
    text = chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"a" * inflated, 9))
    with pytest.raises(ImageTooComplex, match="metadata"):
        decode_image(plain[:33] + text * chunks + plain[33:], size=8, channels=1)
