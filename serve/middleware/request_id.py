"""Gives every request an id (X-Request-ID, echoed), visible to all log lines it causes, and logs one access line."""

from __future__ import annotations

import logging
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.log import incoming_or_new, request_id_var

access_log = logging.getLogger("serve.access")
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def loggable_path(scope: Scope) -> str:
    """The path as the client sent it (still percent-encoded, so an encoded newline stays `%0A`), any raw control
    character escaped: a request cannot forge a log record or colour the terminal."""
    raw = scope.get("raw_path") or scope["path"].encode("utf-8", "backslashreplace")
    return raw.decode("ascii", "backslashreplace").translate(_CONTROL)


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_or_new(Headers(scope=scope).get("x-request-id"))
        token = request_id_var.set(request_id)
        status, start = 500, time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            access_log.info("%s %s %d %.1fms", scope["method"], loggable_path(scope), status,
                            (time.perf_counter() - start) * 1000)
            request_id_var.reset(token)
