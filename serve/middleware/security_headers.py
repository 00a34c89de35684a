"""Browser security headers on every response: no MIME sniffing, no framing, no referrer, and a Content-Security-
Policy (the web page sets its own; JSON and other API answers get one that allows nothing; FastAPI's /docs pages,
which load Swagger UI from its CDN with an inline script, get one that allows exactly that)."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                    ("Referrer-Policy", "no-referrer"))
API_CSP = "default-src 'none'; frame-ancestors 'none'"
DOCS_CSP = ("default-src 'none'; script-src 'unsafe-inline' https://cdn.jsdelivr.net; style-src https://cdn.jsdelivr.net; "
            "img-src https://fastapi.tiangolo.com data:; connect-src 'self'; frame-ancestors 'none'")


def security_headers(content_type: str) -> list[tuple[str, str]]:
    """The headers of a response of `content_type` that did not set its own Content-Security-Policy."""
    csp = DOCS_CSP if content_type.startswith("text/html") else API_CSP
    return [*SECURITY_HEADERS, ("Content-Security-Policy", csp)]


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in security_headers(headers.get("content-type", "")):
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
