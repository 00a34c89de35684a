"""HTTP routes, one file per concern; each reads the ServiceState from app.state."""

from __future__ import annotations

from fastapi import Request

from serve.schemas import ErrorResponse
from serve.state import ServiceState


def service(request: Request) -> ServiceState:
    return request.app.state.service


def errors(*statuses: int) -> dict:
    """OpenAPI entries for the error statuses a route documents."""
    return {status: {"model": ErrorResponse} for status in statuses}
