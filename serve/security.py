"""Keys and switches as FastAPI dependencies that run before the request body is read.

FastAPI reads and parses a body before it solves a route's dependencies, so a client without a key could make the
server receive and parse a 10 MB upload, and learn from a 422 what the form should look like. Routes of routers
built with `GuardedRoute` run their guards on the raw request first; the same guards stay declared as dependencies,
which documents the key headers in OpenAPI. Keys are compared as the bytes the client sent (Starlette would decode
them as latin-1), in constant time.
"""

from __future__ import annotations

import hmac
from typing import Callable

from fastapi import Request, Security
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from pydantic import SecretStr

from serve.errors import ServiceError
from serve.settings import Settings

Check = Callable[[Request], None]


def _settings(request: Request) -> Settings:
    return request.app.state.service.settings


def raw_header(request: Request, name: str) -> bytes | None:
    """The first value of header `name` exactly as received (servers lower-case the names, not the values)."""
    wanted = name.lower().encode("ascii")
    return next((value for key, value in request.scope["headers"] if key == wanted), None)


def _check_key(configured: SecretStr | None, given: bytes | None, header: str, *, open_route: bool) -> None:
    """401 without the key, 403 with a wrong one. With no key configured the route is open or closed (403)."""
    if configured is None:
        if open_route:
            return
        raise ServiceError(403, "key_not_configured", f"this route is closed: the server has no key for {header}")
    if not given:
        raise ServiceError(401, "missing_key", f"missing {header} header", headers={"WWW-Authenticate": header})
    if not hmac.compare_digest(given, configured.get_secret_value().encode("ascii")):
        raise ServiceError(403, "wrong_key", f"wrong {header}")


def guard(check: Check, header: str | None = None) -> Callable:
    """A dependency running `check`; GuardedRoute finds `check` on it and runs it before the body is read.

    With `header`, the dependency also declares that header as an API-key security scheme for OpenAPI."""
    if header is None:
        async def dependency(request: Request) -> None:
            check(request)
    else:
        scheme = APIKeyHeader(name=header, scheme_name=header, auto_error=False)

        async def dependency(request: Request, _: str | None = Security(scheme)) -> None:
            check(request)
    dependency.before_body = check  # type: ignore[attr-defined]
    return dependency


def _probe_enabled(request: Request) -> None:
    if not _settings(request).enable_probe:
        raise ServiceError(404, "probe_disabled", "probes are disabled on this server (--enable-probe)")


def _api_key(request: Request) -> None:
    settings = _settings(request)
    _check_key(settings.api_key, raw_header(request, "X-API-Key"), "X-API-Key", open_route=settings.probe_without_key)


def _admin_key(request: Request) -> None:
    _check_key(_settings(request).admin_key, raw_header(request, "X-Admin-Key"), "X-Admin-Key", open_route=False)


probe_enabled = guard(_probe_enabled)
api_key = guard(_api_key, "X-API-Key")
admin_key = guard(_admin_key, "X-Admin-Key")


class GuardedRoute(APIRoute):
    """An APIRoute that runs the `before_body` checks of its dependencies, in order, before FastAPI reads the body."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()
        checks = [d.dependency.before_body for d in self.dependencies if hasattr(d.dependency, "before_body")]

        async def guarded(request: Request):
            for check in checks:
                check(request)
            return await handler(request)

        return guarded if checks else handler
