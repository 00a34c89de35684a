"""POST /admin/reload: load and warm a new index beside the old one, then swap it in with one assignment; with
several workers, every worker swaps before the reload answers (serve.state's shared serving pointer)."""

from __future__ import annotations

import logging

import anyio
from fastapi import APIRouter, Depends, Request

from retrieval.errors import UserError
from serve.engine import load_index
from serve.errors import ServiceError
from serve.paths import inside
from serve.routes import errors, service
from serve.schemas import ReloadRequest, ReloadResponse
from serve.security import GuardedRoute, admin_key

router = APIRouter(prefix="/admin", tags=["admin"], route_class=GuardedRoute)
log = logging.getLogger(__name__)


@router.post("/reload", response_model=ReloadResponse, dependencies=[Depends(admin_key)],
             responses=errors(401, 403, 408, 409, 413, 422, 503))
async def reload(request: Request, body: ReloadRequest | None = None) -> ReloadResponse:
    """Swap in a new index (or re-read the current one); requests in flight finish on the old one."""
    state = service(request)
    engine = state.current()
    path = engine.index_path if body is None or body.path is None else inside(state.settings.allowed_index_root, body.path)
    if not state.reload_lock.acquire(blocking=False):
        raise ServiceError(409, "reload_in_progress", "another reload is running")
    try:
        new = await anyio.to_thread.run_sync(load_index, engine, path)
        previous = state.swap(new)
        await state.publish(path)
    except UserError as exc:
        raise ServiceError(422, "invalid_index", str(exc)) from None
    finally:
        state.reload_lock.release()
    log.info("reloaded index %s -> %s (%d items) from %s", previous.index_id, new.index_id, new.count, path)
    return ReloadResponse(previous_index_id=previous.index_id, index_id=new.index_id, count=new.count)
