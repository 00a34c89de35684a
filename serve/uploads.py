"""Uploaded images: read with a byte cap, then decoded through the project's one decoder in the decoding processes
(serve/decoding.py), within one budget per request: decode seconds and pixels summed over all of its images (its
bytes are capped by the body limit)."""

from __future__ import annotations

import time

import numpy as np
import torch
from fastapi import UploadFile

from retrieval.models.bundle import Bundle
from retrieval.images import (ALLOWED_FORMATS, DecodeTimeLimit, ImageError, ImageTooLarge, UnsupportedImageFormat,
                             sniff_format)
from retrieval.protocol import protocol_for
from serve.decoding import DecodePool
from serve.errors import ServiceError, image_error
from serve.settings import Settings

REQUEST_PIXELS_PER_IMAGE_CAP = 4
"""Default pixel budget of one request: this many images at the pixel cap."""


async def read_upload(upload: UploadFile, settings: Settings) -> bytes:
    """At most max_upload_bytes + 1 bytes are read, so an oversized part is refused without holding all of it."""
    return within_upload_cap(await upload.read(settings.max_upload_bytes + 1), settings)


def within_upload_cap(data: bytes, settings: Settings) -> bytes:
    """`data`, or 413 image_too_large when it exceeds max_upload_bytes (a multipart part or a raw image body)."""
    if len(data) > settings.max_upload_bytes:
        raise ServiceError(413, "image_too_large", f"image larger than {settings.max_upload_bytes} bytes")
    return data


async def decode_all(pool: DecodePool, blobs: list[bytes], bundle: Bundle, settings: Settings,
                     deadline: float | None = None) -> torch.Tensor:
    """Bytes -> [N, C, H, W] in [0, 1] at the model's input size. The images are decoded one after another, each
    within what the ones before it left of the request's decode_time_limit_s and max_request_pixels (and before
    `deadline`, if sooner); the first image that fails decides the answer: ImageError becomes 413/415/422, and an
    image that is no allowed format by its first bytes is refused (415) before any is decoded."""
    for data in blobs:  # here, not only in the decoder: a body refused by its first bytes is never copied there
        if data and sniff_format(data) is None:  # empty: the decoder's 422, as before
            raise image_error(UnsupportedImageFormat(f"image: not an image in an allowed format by its first bytes "
                                                     f"(allowed: {', '.join(sorted(ALLOWED_FORMATS))})"))
    seconds, pixels, cap = settings.decode_time_limit_s, request_pixels(settings, bundle), max_pixels(settings, bundle)
    arrays = []
    for data in blobs:
        limit = seconds if deadline is None else min(seconds, deadline - time.monotonic())
        try:
            if limit <= 0:
                raise DecodeTimeLimit("images: the request's decode time limit is used up")
            array, count, took = await pool.decode(data, size=bundle.input_size, channels=bundle.channels,
                                                   max_pixels=min(cap, pixels), time_limit_s=limit)
        except ImageTooLarge as exc:
            if pixels < cap:  # the request's budget, not the image's own cap, was the limit
                raise ServiceError(413, "image_too_large", f"the images of this request have more than "
                                   f"max_request_pixels ({request_pixels(settings, bundle)}) pixels in all") from None
            raise image_error(exc) from None
        except ImageError as exc:
            raise image_error(exc) from None
        seconds, pixels = seconds - took, pixels - count
        arrays.append(array)
    return torch.from_numpy(np.stack(arrays))


def max_pixels(settings: Settings, bundle: Bundle) -> int:
    """The configured pixel cap, else the one of the served model's input-size protocol."""
    return settings.max_pixels or protocol_for(bundle.input_size).max_pixels


def request_pixels(settings: Settings, bundle: Bundle) -> int:
    """Pixels that all images of one request may have together."""
    return settings.max_request_pixels or REQUEST_PIXELS_PER_IMAGE_CAP * max_pixels(settings, bundle)
