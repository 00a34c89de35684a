"""Uploaded images are decoded in a small pool of processes, never on the event loop or in a thread of the server.

A decode that runs past its time is stopped for real: the pool (pebble, a maintained process pool with per-task
timeouts) kills the process that runs it and starts another, which a thread could not do (Pillow's C decoders do
not check a flag). The decoder also checks the deadline itself between reads (retrieval.images), so the kill is only
the backstop for a decoder stuck inside one call. Whatever a decode allocates (Pillow images, inflated metadata,
traceback frames of a refused image) lives and dies in that process; the server only ever holds the request's bytes
and the small float array that comes back. Processes are forked from a forkserver that has imported only the
decoder (PIL and numpy, no torch), so a replacement is ready in milliseconds, and each is recycled after
MAX_TASKS decodes so that no heap grows for ever.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import multiprocessing
import time

import numpy as np
import pebble
from PIL import Image

from retrieval.images import CorruptImage, DecodeTimeLimit, decode_array

KILL_GRACE_S = 0.5
"""A decode gets this long past its own deadline (which it checks itself) before its process is killed."""
MAX_TASKS = 500
"""Decodes per process before it is replaced."""
STOP_TIMEOUT_S = 5.0


def _decode(data: bytes, size: int, channels: int, max_pixels: int, time_limit_s: float) -> tuple[np.ndarray, int,
                                                                                                   float]:
    """In a pool process: (pixels [C, size, size], the image's pixel count, decode seconds)."""
    start = time.monotonic()
    pixels, count = decode_array(data, size=size, channels=channels, max_pixels=max_pixels,
                                 deadline=start + time_limit_s)
    return pixels, count, time.monotonic() - start


class DecodePool:
    """`processes` decoding processes; `decode` awaits one image's decode without blocking the event loop."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])  # not the server's __main__, which would import everything
        self._pool = pebble.ProcessPool(max_workers=processes, max_tasks=MAX_TASKS, context=context)

    async def decode(self, data: bytes, *, size: int, channels: int, max_pixels: int,
                     time_limit_s: float) -> tuple[np.ndarray, int, float]:
        """(pixels, pixel count, seconds); ImageError as retrieval.images raises it. Cancelling the caller (a client
        gone, shutdown) cancels the decode, and pebble stops the process running it."""
        future = self._pool.schedule(_decode, args=(data, size, channels, max_pixels, time_limit_s),
                                     timeout=time_limit_s + KILL_GRACE_S)
        try:
            return await asyncio.wrap_future(future)
        except concurrent.futures.TimeoutError:
            raise DecodeTimeLimit("image: decoding took longer than the time limit (its process was stopped)") from None
        except pebble.ProcessExpired as exc:
            raise CorruptImage(f"image: the decoder crashed on this image (exit status {exc.exitcode})") from None
        finally:  # a raised error's traceback holds this frame: frame -> future -> error would be a cycle that
            del future  # keeps the request's frames and bytes until a full collection (240 MB a flood)

    async def warm(self) -> None:
        """Start every process (and the forkserver) now rather than in the first requests."""
        buffer = io.BytesIO()
        Image.new("L", (1, 1)).save(buffer, format="PNG")
        await asyncio.gather(*(self.decode(buffer.getvalue(), size=1, channels=1, max_pixels=1, time_limit_s=10)
                               for _ in range(self.processes)))

    def close(self) -> None:
        self._pool.stop()
        self._pool.join(STOP_TIMEOUT_S)
