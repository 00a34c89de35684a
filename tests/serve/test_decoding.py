"""The decoding processes (serve.decoding) talk to the event loop over sockets: a process that dies fails only the
image it was decoding and its slot gets a new one; a cancelled decode stops its process; more decodes than
processes wait their turn and each gets its own answer."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from PIL import Image

from retrieval.images import CorruptImage
from serve.decoding import DecodePool
from tests.support import bombs
from tests.support.service import png

TIMEOUT_S = 60


def _run(scenario) -> object:
    async def main():
        pool = DecodePool(1)
        try:
            await pool.warm()
            return await scenario(pool)
        finally:
            pool.close()

    return asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))


async def _decode(pool: DecodePool, data: bytes, side: int = 4):
    return await pool.decode(data, size=side, channels=1, max_pixels=1 << 24, time_limit_s=30)


def _running(pool: DecodePool):
    """The process decoding now (the pool's one busy worker)."""
    (worker,) = pool._busy
    return worker.process


async def _wait_until_busy(pool: DecodePool) -> None:
    while not pool._busy:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # the request is in the process now


def test_a_process_that_dies_mid_decode_fails_only_that_image_and_is_replaced():
    async def scenario(pool):
        decoding = asyncio.create_task(_decode(pool, bombs.costly_jpeg(side=4000)))
        await _wait_until_busy(pool)
        os.kill(_running(pool).pid, signal.SIGKILL)
        with pytest.raises(CorruptImage, match=r"decoder crashed .*exit status -9"):
            await decoding
        return await _decode(pool, png(Image.new("L", (8, 8), 255)))

    pixels, count, _ = _run(scenario)
    assert count == 64 and (pixels == 1).all()


def test_a_cancelled_decode_kills_its_process_and_the_next_one_runs():
    """Killed (SIGKILL), not left to finish a decode nobody waits for (it would then exit on the closed socket)."""
    async def scenario(pool):
        decoding = asyncio.create_task(_decode(pool, bombs.costly_jpeg(side=4000)))
        await _wait_until_busy(pool)
        process = _running(pool)
        decoding.cancel()
        with pytest.raises(asyncio.CancelledError):
            await decoding
        await asyncio.to_thread(process.join, TIMEOUT_S / 2)
        return process.exitcode, await _decode(pool, png(Image.new("L", (8, 8), 0)))

    exitcode, (pixels, count, _) = _run(scenario)
    assert exitcode == -signal.SIGKILL
    assert count == 64 and (pixels == 0).all()


def test_more_decodes_than_processes_each_get_their_own_image():
    shades = [0, 64, 128, 192, 255]

    async def scenario(pool):
        return await asyncio.gather(*(_decode(pool, png(Image.new("L", (8, 8), shade))) for shade in shades))

    answers = _run(scenario)
    assert [round(float(pixels.mean()) * 255) for pixels, _, _ in answers] == shades
