"""Uploaded images: read with a byte cap, then decode through the project's one decoder (format allowlist, pixel
and cost caps, a wall-clock limit)."""

from __future__ import annotations

import time

import torch
from fastapi import UploadFile

from retrieval.bundle import Bundle
from retrieval.images import ImageError, decode_image
from retrieval.protocol import protocol_for
from serve.errors import ServiceError, image_error
from serve.settings import Settings


async def read_upload(upload: UploadFile, settings: Settings) -> bytes:
    """At most max_upload_bytes + 1 bytes are read, so an oversized part is refused without holding all of it."""
    return within_upload_cap(await upload.read(settings.max_upload_bytes + 1), settings)


def within_upload_cap(data: bytes, settings: Settings) -> bytes:
    """`data`, or 413 image_too_large when it exceeds max_upload_bytes (a multipart part or a raw image body)."""
    if len(data) > settings.max_upload_bytes:
        raise ServiceError(413, "image_too_large", f"image larger than {settings.max_upload_bytes} bytes")
    return data


def decode(data: bytes, bundle: Bundle, settings: Settings, deadline: float | None = None) -> torch.Tensor:
    """Bytes -> [1, C, H, W] in [0, 1] at the model's input size, within settings.decode_time_limit_s (and
    `deadline`, if sooner); ImageError becomes 413/415/422."""
    limit = time.monotonic() + settings.decode_time_limit_s
    try:
        image = decode_image(data, size=bundle.input_size, channels=bundle.channels,
                             max_pixels=max_pixels(settings, bundle),  # bytes: capped once, by read_upload
                             deadline=limit if deadline is None else min(limit, deadline))
    except ImageError as exc:
        raise image_error(exc) from None
    return image.unsqueeze(0)


def max_pixels(settings: Settings, bundle: Bundle) -> int:
    """The configured pixel cap, else the one of the served model's input-size protocol."""
    return settings.max_pixels or protocol_for(bundle.input_size).max_pixels
