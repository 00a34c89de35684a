"""One JSON error shape for every failure: {"error": {"code": ..., "message": ...}} with a fitting status."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
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


ERROR_CODES: dict[int, dict[str, str]] = {
    400: {"invalid_multipart": "a form body that cannot be parsed (no boundary, too many parts, a field over 1 MiB)"},
    401: {"missing_key": "X-API-Key / X-Admin-Key missing (checked before the body is read)"},
    403: {"wrong_key": "the key differs from the configured one (compared as bytes)",
          "key_not_configured": "/admin/* on a server without --admin-key",
          "path_not_allowed": "a reload path that resolves outside the index root"},
    404: {"not_found": "no such route", "probe_disabled": "/probe on a server without --enable-probe",
          "unknown_item": "no gallery item with this id", "no_thumbnails": "the index was built without thumbnails"},
    405: {"method_not_allowed": "the route exists for another method"},
    408: {"request_timeout": "headers (header_timeout_s) or body (body_timeout_s) not received in time"},
    409: {"reload_in_progress": "another reload is running"},
    413: {"request_too_large": "body over its limit (by Content-Length before reading, or while reading)",
          "image_too_large": "a file over max_upload_bytes, an image over max_pixels, or the images of one request "
                             "over max_request_pixels together",
          "image_too_complex": "an image built to be expensive to decode (JPEG scans, RLE BMP, canvas vs frame, PNG "
                               "text or ICC metadata inflating past its cap)",
          "too_many_images": "a batch over max_batch images"},
    415: {"unsupported_image_format": "a file whose first bytes are not those of PNG, JPEG, WebP, BMP or GIF "
                                      "(refused before any decoder sees it)"},
    422: {"invalid_request": "a missing or invalid field (numbers are bounded before conversion)",
          "corrupt_image": "empty, or truncated or malformed in its own format",
          "invalid_image": "an image that cannot be used otherwise",
          "decode_time_limit": "decoding the request's images ran past decode_time_limit_s (all images together)",
          "too_many_steps": "steps over probe_max_steps", "invalid_path": "a reload path that cannot be resolved",
          "invalid_index": "a reload target that is not a valid index for the served model"},
    429: {"probe_busy": "every probe slot is busy (Retry-After)"},
    431: {"headers_too_large": "request line and headers over max_header_bytes (connection closed)"},
    500: {"internal_error": "a bug; the server log has it under the request id"},
    503: {"not_ready": "the model and index are still loading (Retry-After)",
          "probe_time_limit": "the probe (decoding included) ran past probe_time_limit_s",
          "reload_incomplete": "a worker did not switch to the reloaded index in time",
          "task_stopped": "/readyz: this worker's search batcher or reload follower stopped (the log says why)",
          "too_many_connections": "more open connections than max_connections (Retry-After)"},
}
"""Every error status and code the service answers: the README's table and the OpenAPI document come from here
(tests/serve/test_error_table.py checks the code against it)."""


class ServiceError(Exception):
    """A request the service refuses, with its HTTP status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_body(code: str, message: str) -> bytes:
    """The one JSON error body, for the app's responses and the transport's own refusals alike."""
    return json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=False, separators=(",", ":")).encode()


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(code, message), status_code=status, headers=headers, media_type="application/json")


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
    async def _service(_: Request, exc: ServiceError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(ImageError)
    async def _image(_: Request, exc: ImageError) -> Response:
        err = image_error(exc)
        return error_response(err.status, err.code, err.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        return error_response(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))
