"""Turns an unexpected exception into the JSON 500 shape, logged with its request id (inside RequestIdMiddleware)."""

from __future__ import annotations

import logging

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.errors import error_response
from serve.middleware.request_id import loggable_path

log = logging.getLogger("serve.errors")


class CatchAllMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except ClientDisconnect:  # the client left mid-body: nobody to answer, nothing broken
            log.info("client disconnected during %s %s", scope["method"], loggable_path(scope))
        except Exception:
            log.exception("unhandled error in %s %s", scope["method"], loggable_path(scope))
            if started:
                raise  # too late for a clean answer; the server closes the connection
            response = error_response(500, "internal_error", "internal error; the server log has it under the request id")
            await response(scope, receive, send)
