"""HTTP routes, one file per concern; each reads the ServiceState from app.state."""

from __future__ import annotations

from fastapi import Request

from serve.errors import ERROR_CODES
from serve.schemas import ErrorResponse
from serve.state import ServiceState


def service(request: Request) -> ServiceState:
    return request.app.state.service


def errors(*statuses: int) -> dict:
    """OpenAPI entries for the error statuses a route documents, each listing the codes of its status."""
    return {status: {"model": ErrorResponse, "description": "; ".join(
        f"`{code}`: {meaning}" for code, meaning in ERROR_CODES[status].items())} for status in statuses}
