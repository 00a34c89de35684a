"""One JSON error shape for every failure: {"error": {"code": ..., "message": ...}} with a fitting status."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from retrieval.images import (CorruptImage, DecodeTimeLimit, ImageError, ImageTooComplex, ImageTooLarge,
                              UnsupportedImageFormat)

_IMAGE_STATUS: dict[type[ImageError], tuple[int, str]] = {
    UnsupportedImageFormat: (415, "unsupported_image_format"),
    ImageTooLarge: (413, "image_too_large"),
    ImageTooComplex: (413, "image_too_complex"),
    CorruptImage: (422, "corrupt_image"),
    DecodeTimeLimit: (422, "decode_time_limit"),
}
_HTTP_CODES = {400: "invalid_multipart", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
               413: "request_too_large"}
"""Codes of the errors Starlette raises itself; 400 only comes from a multipart body it cannot parse."""


class ServiceError(Exception):
    """A request the service refuses, with its HTTP status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def image_error(exc: ImageError) -> ServiceError:
    """The status of an undecodable upload: 415 wrong format, 413 too big, 422 corrupt."""
    for kind, (status, code) in _IMAGE_STATUS.items():
        if isinstance(exc, kind):
            return ServiceError(status, code, str(exc))
    return ServiceError(422, "invalid_image", str(exc))


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "header"))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception type the routes can raise to the JSON error shape."""

    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(ImageError)
    async def _image(_: Request, exc: ImageError) -> JSONResponse:
        err = image_error(exc)
        return error_response(err.status, err.code, err.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))
