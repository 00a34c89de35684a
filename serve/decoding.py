"""Uploaded images are decoded in a small pool of processes, never on the event loop or in a thread of the server.

A decode that runs past its time is stopped for real: its process is killed and the slot gets a new one, which a
thread could not do (Pillow's C decoders do not check a flag). The decoder also checks the deadline itself between
reads (retrieval.images), so the kill is only the backstop for a decoder stuck inside one call. Whatever a decode
allocates (Pillow images, inflated metadata, traceback frames of a refused image) lives and dies in that process;
the server only ever holds the request's bytes and the small float array that comes back. Processes are forked from
a forkserver that has imported only the decoder (PIL and numpy, no torch), so a replacement is ready in milliseconds,
and each is replaced after MAX_TASKS decodes so that no heap grows for ever.

Each process talks to the server over its own socket pair, which the event loop reads and writes itself: a request
is a fixed header and the image's bytes, an answer the pixels' raw float32 bytes. No thread, queue or pickling sits
between a request and its process (a thread-based pool cost 0.5 ms of the server's CPU per decode, and 1.4 ms with
its processes, for a 28x28 PNG that decodes in 0.06 ms).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import multiprocessing
import pickle
import socket
import struct
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

import numpy as np
from PIL import Image

from retrieval.images import CorruptImage, DecodeTimeLimit, decode_array

KILL_GRACE_S = 0.5
"""A decode gets this long past its own deadline (which it checks itself) before its process is killed."""
MAX_TASKS = 500
"""Decodes per process before it is replaced."""
STOP_TIMEOUT_S = 5.0
EXIT_STATUS_WAIT_S = 1.0
"""How long a crashed process's exit status is waited for (it names the crash in the answer)."""
START_POLL_S = 1.0
"""While a new process starts (it imports the server's main module first, if any: tens of seconds on a busy CPU),
how often it is checked for having died instead; a live one is waited for as long as it takes."""
_READY = b"R"

_REQUEST = struct.Struct("<iiqdq")
"""size, channels, max_pixels, time_limit_s, image bytes (which follow)."""
_ANSWER = struct.Struct("<?qdq")
"""ok, pixel count, decode seconds, payload bytes (which follow: float32 pixels, or a pickled error)."""


def _serve(sock: socket.socket) -> None:
    """A decoding process: answer requests until the server closes the socket."""
    with sock:
        sock.sendall(_READY)
        while head := _receive(sock, _REQUEST.size):
            size, channels, max_pixels, time_limit_s, length = _REQUEST.unpack(head)
            data = _receive(sock, length)
            start = time.monotonic()
            try:
                pixels, count = decode_array(data, size=size, channels=channels, max_pixels=max_pixels,
                                             deadline=start + time_limit_s)
            except Exception as exc:  # noqa: BLE001  (every failure goes back to the request that caused it)
                error = _pickled(exc)
                sock.sendall(_ANSWER.pack(False, 0, 0.0, len(error)) + error)
                continue
            payload = np.ascontiguousarray(pixels, dtype=np.float32).tobytes()
            sock.sendall(_ANSWER.pack(True, count, time.monotonic() - start, len(payload)) + payload)


def _receive(sock: socket.socket, length: int) -> bytes:
    """Exactly `length` bytes, or b"" when the server has closed the socket."""
    buffer = bytearray(length)
    view, got = memoryview(buffer), 0
    while got < length:
        n = sock.recv_into(view[got:])
        if n == 0:
            return b""
        got += n
    return bytes(buffer)


def _pickled(exc: Exception) -> bytes:
    try:
        return pickle.dumps(exc)
    except Exception:  # noqa: BLE001  (an error that cannot travel still must)
        return pickle.dumps(RuntimeError(f"decoder: {exc!r}"))


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    sock: socket.socket
    """The server's end, non-blocking: read and written by the event loop."""
    tasks: int = 0

    def stop(self, kill: bool) -> None:
        """Close the socket (a process waiting for work then exits); with `kill`, SIGKILL it too."""
        self.sock.close()
        if kill:
            self.process.kill()


class DecodePool:
    """`processes` decoding processes; `decode` awaits one image's decode without blocking the event loop. Not bound
    to one event loop: every wait belongs to the loop of the decode that waits."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([__name__])  # not the server's __main__, which would import everything
        self._slots: list[_Worker | None] = [None] * processes
        """Free slots; None: its process is not started yet (or was stopped), the next decode in it starts one."""
        self._busy: set[_Worker] = set()
        self._waiting: collections.deque[asyncio.Future] = collections.deque()
        self._replacing: set[asyncio.Task] = set()

    async def decode(self, data: bytes, *, size: int, channels: int, max_pixels: int,
                     time_limit_s: float) -> tuple[np.ndarray, int, float]:
        """(pixels, pixel count, seconds); ImageError as retrieval.images raises it. Cancelling the caller (a client
        gone, shutdown) cancels the decode and stops the process running it."""
        worker = await self._take()
        loop = asyncio.get_running_loop()
        clean = False
        try:
            await loop.sock_sendall(worker.sock, _REQUEST.pack(size, channels, max_pixels, time_limit_s, len(data)))
            await loop.sock_sendall(worker.sock, data)
            try:
                async with asyncio.timeout(time_limit_s + KILL_GRACE_S):
                    ok, count, took, length = _ANSWER.unpack(await _read(loop, worker.sock, _ANSWER.size))
                    payload = await _read(loop, worker.sock, length)
            except TimeoutError:
                raise DecodeTimeLimit("image: decoding took longer than the time limit (its process was stopped)") \
                    from None
            except ConnectionError:
                raise CorruptImage(f"image: the decoder crashed on this image (exit status "
                                   f"{await self._exit_status(worker)})") from None
            clean = True
        finally:
            self._give(worker, clean)
        if not ok:
            raise pickle.loads(payload)
        return np.frombuffer(payload, dtype=np.float32).reshape(channels, size, size), count, took

    async def warm(self) -> None:
        """Start every process (and the forkserver) now rather than in the first requests."""
        buffer = io.BytesIO()
        Image.new("L", (1, 1)).save(buffer, format="PNG")
        await asyncio.gather(*(self.decode(buffer.getvalue(), size=1, channels=1, max_pixels=1, time_limit_s=10)
                               for _ in range(self.processes)))

    def close(self) -> None:
        workers = [w for w in (*self._slots, *self._busy) if w is not None]
        self._slots, self._busy = [None] * self.processes, set()
        for worker in workers:
            worker.stop(kill=False)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(STOP_TIMEOUT_S)

    async def _take(self) -> _Worker:
        """A free slot's process (started here if the slot has none), waiting for a slot while all are busy."""
        while not self._slots:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # it was this waiter's turn: pass it on
                raise
        worker = self._slots.pop()
        if worker is None:
            try:
                worker = await asyncio.to_thread(self._start)
            except BaseException:
                self._release(None)
                raise
        self._busy.add(worker)
        return worker

    def _give(self, worker: _Worker, clean: bool) -> None:
        """Back to the free slots; a process whose exchange did not finish cleanly (killed, crashed, cancelled mid-
        answer) or that has done MAX_TASKS decodes is stopped and replaced in the background, so that no request
        waits for a process to start (seconds on a busy CPU) while another is free."""
        self._busy.discard(worker)
        worker.tasks += 1
        if clean and worker.tasks < MAX_TASKS:
            self._release(worker)
            return
        worker.stop(kill=not clean)
        task = asyncio.get_running_loop().create_task(self._replace())
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _replace(self) -> None:
        try:
            worker = await asyncio.to_thread(self._start)
        except Exception:  # noqa: BLE001  (the slot's next decode tries again, and reports what fails)
            worker = None
        self._release(worker)

    def _release(self, slot: _Worker | None) -> None:
        self._slots.append(slot)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _start(self) -> _Worker:
        """A new process, once ready: a decode's time limit never counts its start-up."""
        ours, theirs = socket.socketpair()
        with theirs:
            process = self._context.Process(target=_serve, args=(theirs,), daemon=True)
            process.start()
        worker = _Worker(process, ours)
        ours.settimeout(START_POLL_S)
        try:
            while True:
                try:
                    ready = ours.recv(1)
                    break
                except TimeoutError:
                    if not process.is_alive():
                        raise ConnectionResetError("a decoding process exited while starting") from None
            if ready != _READY:
                raise ConnectionResetError("a decoding process exited while starting")
        except OSError:
            worker.stop(kill=True)
            raise
        ours.setblocking(False)
        return worker

    @staticmethod
    async def _exit_status(worker: _Worker) -> int | None:
        await asyncio.to_thread(worker.process.join, EXIT_STATUS_WAIT_S)
        return worker.process.exitcode


async def _read(loop: asyncio.AbstractEventLoop, sock: socket.socket, length: int) -> bytes:
    """Exactly `length` bytes from a non-blocking socket; ConnectionError when the process closed it first."""
    buffer = bytearray(length)
    view, got = memoryview(buffer), 0
    while got < length:
        n = await loop.sock_recv_into(sock, view[got:])
        if n == 0:
            raise ConnectionResetError("decoding process closed its socket")
        got += n
    return bytes(buffer)
