"""POST /search and /search/batch: the images are decoded in the decoding processes within the request's budget
(serve.uploads), then queued for the micro-batcher (serve.batching), which embeds (ONNX) and searches (FAISS) the
queries of concurrent requests together."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.routing import APIRoute
from starlette.datastructures import UploadFile as StarletteUpload
from starlette.types import Receive, Scope, Send

from serve.batching import SearchBatcher
from serve.errors import ServiceError
from serve.routes import errors, service
from serve.schemas import BatchItem, BatchSearchResponse, SearchResponse
from serve.settings import Settings
from serve.uploads import decode_all, read_upload, within_upload_cap

router = APIRouter(tags=["search"])
TOP_K_MAX = 100
TopK = Annotated[int, Form(ge=1, le=TOP_K_MAX, description="Results per image.")]
_TOP_K = {"type": "integer", "minimum": 1, "maximum": TOP_K_MAX, "default": 10, "description": "Results."}
_SEARCH_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "Query image."}, "top_k": _TOP_K}}},
    "image/*": {"schema": {"type": "string", "format": "binary", "description": "Query image as the whole body "
                                                                               "(top_k in the query string)."}},
}}}
"""/search reads its body itself (one small file needs no form machinery, and a raw image body none at all), so
its two body forms are declared here for the OpenAPI document."""


def batcher(request: Request) -> SearchBatcher:
    return request.app.state.batcher


class _PlainSearchRoute(APIRoute):
    """/search as FastAPI documents it (query parameter, both body forms, response model, errors), answered without
    FastAPI's per-request work: no dependency solving, exit stacks or second pass over the answer (FastAPI dumped,
    re-validated and dumped again what `search` had already built). Errors still reach the app's handlers, and other
    methods get the usual 405."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in self.methods:
            await super().handle(scope, receive, send)
            return
        request = Request(scope, receive, send)
        response = await self.endpoint(request, _top_k(request.query_params.get("top_k"), 10))
        await response(scope, receive, send)


async def search(request: Request, top_k: Annotated[int, Query(ge=1, le=TOP_K_MAX, description=(
                     "Results, with a raw image body (a form's own top_k field wins)."))] = 10) -> Response:
    """The gallery items nearest to one query image: a multipart form (field `image`, optional `top_k`) or the
    image itself as the body with an `image/*` Content-Type."""
    start = time.perf_counter()
    state = service(request)
    engine = state.current()  # read once: a concurrent reload cannot mix two indexes in one answer
    queue = batcher(request)
    with queue.arriving():
        image, top_k = await _query(request, state.settings, top_k)
        pixels = await decode_all(state.decoder, [image], engine.bundle, state.settings)
    rankings = await queue.search(engine, pixels, top_k)
    answer = SearchResponse(results=rankings[0], model_id=engine.model_id, index_id=engine.index_id,
                            took_ms=(time.perf_counter() - start) * 1000)
    return Response(answer.model_dump_json(), media_type="application/json")


router.add_api_route("/search", search, methods=["POST"], response_model=SearchResponse,
                     responses=errors(400, 408, 413, 415, 422, 503), openapi_extra=_SEARCH_BODY,
                     route_class_override=_PlainSearchRoute)


@router.post("/search/batch", response_model=BatchSearchResponse,
             responses=errors(400, 408, 413, 415, 422, 503))
async def search_batch(request: Request, images: Annotated[list[UploadFile], File(description="Query images.")],
                       top_k: TopK = 10) -> BatchSearchResponse:
    """Several query images in one request, embedded as one batch."""
    start = time.perf_counter()
    state = service(request)
    limit = state.settings.max_batch
    if len(images) > limit:
        raise ServiceError(413, "too_many_images", f"{len(images)} images; a batch holds at most {limit}")
    engine = state.current()
    blobs = [await read_upload(upload, state.settings) for upload in images]
    pixels = await decode_all(state.decoder, blobs, engine.bundle, state.settings)
    rankings = await batcher(request).search(engine, pixels, top_k)
    return BatchSearchResponse(items=[BatchItem(results=hits) for hits in rankings], model_id=engine.model_id,
                               index_id=engine.index_id, took_ms=(time.perf_counter() - start) * 1000)


async def _query(request: Request, settings: Settings, top_k: int) -> tuple[bytes, int]:
    """The image bytes and top_k of a /search body: raw `image/*`, or a form with `image` and `top_k`."""
    if request.headers.get("content-type", "").startswith("image/"):
        return within_upload_cap(await request.body(), settings), top_k
    async with request.form(max_files=1, max_fields=8) as form:
        upload = form.get("image")
        if not isinstance(upload, StarletteUpload):
            raise ServiceError(422, "invalid_request", "image: a multipart file field `image` (or a raw image/* "
                                                       "body) is required")
        return await read_upload(upload, settings), _top_k(form.get("top_k"), top_k)


def _top_k(value: object, default: int) -> int:
    """A query string's or form's top_k, bounded before int() converts it (int() of 4,301 digits raises, and costs
    time before)."""
    if value is None:
        return default
    value = value.strip() if isinstance(value, str) else ""
    if len(value) > len(str(TOP_K_MAX)) or not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= TOP_K_MAX:
        raise ServiceError(422, "invalid_request", f"top_k: must be an integer from 1 to {TOP_K_MAX}")
    return int(value)
