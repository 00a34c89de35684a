"""Refuses oversized or slow request bodies early: by Content-Length before reading, by counting while reading, and
by a deadline on the whole body (a client that stops mid-body would otherwise hold its connection forever)."""

from __future__ import annotations

import time
from typing import Callable

import anyio
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.errors import error_response


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes its limit; an HTTPException so that FastAPI does not turn it into 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class BodyTimeout(HTTPException):
    """Raised from `receive` when the body has not fully arrived by its deadline (408)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"request body not received within {timeout_s} s", headers={"Connection": "close"})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int], timeout_s: float) -> None:
        self.app, self.limit_for, self.timeout_s = app, limit_for, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            response = error_response(413, "request_too_large", f"request body larger than {limit} bytes")
            await response(scope, receive, send)
            return
        received, deadline, done = 0, time.monotonic() + self.timeout_s, False

        async def capped_receive() -> Message:
            nonlocal received, done
            if done:  # after the body only a disconnect can come: wait for it without a deadline
                return await receive()
            with anyio.move_on_after(max(0.0, deadline - time.monotonic())) as scope_:
                message = await receive()
            if scope_.cancelled_caught:
                raise BodyTimeout(self.timeout_s)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                done = not message.get("more_body", False)
            return message

        await self.app(scope, capped_receive, send)
