"""Helpers of the service tests: a real uvicorn server in a thread, and image bytes."""

from __future__ import annotations

import io
import socket
import threading
import time

import httpx
import uvicorn
from PIL import Image

from serve.server import uvicorn_config

API_KEY, ADMIN_KEY = "test-api-key", "test-admin-key"


class LiveServer:
    """uvicorn serving an app in a background thread on a socket bound before start (no port race)."""

    def __init__(self, app, settings=None) -> None:
        """With `settings`, the server has the project's transport limits (serve.server.uvicorn_config)."""
        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        if settings is None:
            config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=1)
        else:
            config = uvicorn_config(app, settings, workers=1, timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    @property
    def state(self):
        return self.app.state.service

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while httpx.get(f"{self.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "service did not become ready"
            time.sleep(0.02)


def png(tensor_or_image, mode: str | None = None) -> bytes:
    """PNG bytes of a [1, H, W] tensor in [0, 1] or of a PIL image."""
    image = tensor_or_image
    if not isinstance(image, Image.Image):
        image = Image.fromarray((image[0].numpy() * 255).round().astype("uint8"), mode="L")
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
