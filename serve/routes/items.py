"""GET /items/{id}/thumbnail: the stored preview of a gallery item, so a client can show what a hit is."""

from __future__ import annotations

import hashlib

from fastapi import APIRouter, Request, Response

from retrieval.gallery.thumbnails import media_type
from serve.errors import ServiceError
from serve.routes import errors, service

router = APIRouter(tags=["items"])
CACHE_CONTROL = "public, max-age=3600"
"""Ids are reused when an index is rebuilt, so previews are cached for a while and revalidated by ETag, not forever."""


@router.get(
    "/items/{item_id}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "The item's preview."}}
    | errors(404, 422, 503),
)
async def thumbnail(request: Request, item_id: int) -> Response:
    """The item's preview image (PNG or JPEG, at most 128 px). 404 `unknown_item` for an id not in the index,
    404 `no_thumbnails` when the index was built with `--no-thumbnails`."""
    index = service(request).current().index
    if index.thumbnails is None:
        raise ServiceError(404, "no_thumbnails", "this index was built without thumbnails (--no-thumbnails); "
                           "rebuild it with `robust-retrieval index` to serve them")
    try:
        data = index.thumbnails.get(item_id)
    except IndexError:
        raise ServiceError(404, "unknown_item", f"no item {item_id} in this index (ids 0..{len(index) - 1})") from None
    etag = f'"{hashlib.blake2b(data, digest_size=16).hexdigest()}"'
    headers = {"Cache-Control": CACHE_CONTROL, "ETag": etag}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type(data), headers=headers)
