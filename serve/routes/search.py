"""POST /search and /search/batch: decode, embed (ONNX) and search (FAISS) off the event loop."""

from __future__ import annotations

import time
from typing import Annotated

import anyio
import torch
from fastapi import APIRouter, File, Form, Request, UploadFile

from serve.errors import ServiceError
from serve.routes import errors, service
from serve.schemas import BatchItem, BatchSearchResponse, SearchResponse
from serve.uploads import decode, read_upload

router = APIRouter(tags=["search"])
TopK = Annotated[int, Form(ge=1, le=100, description="Results per image.")]


@router.post("/search", response_model=SearchResponse, responses=errors(413, 415, 422, 503))
async def search(request: Request, image: Annotated[UploadFile, File(description="Query image.")],
                 top_k: TopK = 10) -> SearchResponse:
    """The gallery items nearest to one query image."""
    start = time.perf_counter()
    items, engine = await _rank(request, [image], top_k)
    return SearchResponse(results=items[0].results, model_id=engine.model_id, index_id=engine.index_id,
                          took_ms=(time.perf_counter() - start) * 1000)


@router.post("/search/batch", response_model=BatchSearchResponse, responses=errors(413, 415, 422, 503))
async def search_batch(request: Request, images: Annotated[list[UploadFile], File(description="Query images.")],
                       top_k: TopK = 10) -> BatchSearchResponse:
    """Several query images in one request, embedded as one batch."""
    start = time.perf_counter()
    limit = service(request).settings.max_batch
    if len(images) > limit:
        raise ServiceError(413, "too_many_images", f"{len(images)} images; a batch holds at most {limit}")
    items, engine = await _rank(request, images, top_k)
    return BatchSearchResponse(items=items, model_id=engine.model_id, index_id=engine.index_id,
                               took_ms=(time.perf_counter() - start) * 1000)


async def _rank(request: Request, uploads: list[UploadFile], top_k: int):
    state = service(request)
    engine = state.current()  # read once: a concurrent reload cannot mix two indexes in one answer
    blobs = [await read_upload(upload, state.settings) for upload in uploads]

    def work():
        images = torch.cat([decode(blob, engine.bundle, state.settings) for blob in blobs])
        embeddings, embed_s = engine.embed(images)
        rankings, search_s = engine.search(embeddings, top_k)
        return rankings, embed_s, search_s

    rankings, embed_s, search_s = await anyio.to_thread.run_sync(work, limiter=state.cpu_limiter)
    state.metrics.embed.observe(embed_s)
    state.metrics.search.observe(search_s)
    return [BatchItem(results=hits) for hits in rankings], engine
