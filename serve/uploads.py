"""Uploaded images: read with a byte cap, then decode through the project's one decoder (format allowlist, pixel cap)."""

from __future__ import annotations

import torch
from fastapi import UploadFile

from retrieval.bundle import Bundle
from retrieval.images import ImageError, decode_image
from serve.errors import ServiceError, image_error
from serve.settings import Settings


async def read_upload(upload: UploadFile, settings: Settings) -> bytes:
    """At most max_upload_bytes + 1 bytes are read, so an oversized part is refused without holding all of it."""
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise ServiceError(413, "image_too_large", f"image larger than {settings.max_upload_bytes} bytes")
    return data


def decode(data: bytes, bundle: Bundle, settings: Settings) -> torch.Tensor:
    """Bytes -> [1, C, H, W] in [0, 1] at the model's input size; ImageError becomes 413/415/422."""
    try:
        image = decode_image(data, size=bundle.input_size, channels=bundle.channels,
                             max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels)
    except ImageError as exc:
        raise image_error(exc) from None
    return image.unsqueeze(0)
