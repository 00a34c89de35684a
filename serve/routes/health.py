"""Liveness, readiness, service description and Prometheus metrics."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serve.probe import PROBE_ATTACKS
from serve.routes import errors, service
from serve.schemas import IndexInfo, InfoResponse, Limits, ModelInfo, Status
from serve.errors import ServiceError
from serve.uploads import max_pixels, request_pixels

router = APIRouter(tags=["health"])


@router.get("/livez", response_model=Status)
async def livez() -> Status:
    """The process answers (says nothing about the model)."""
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses=errors(503))
async def readyz(request: Request) -> Status:
    """200 once the model and index are loaded, verified and warmed and the worker's background tasks (search
    batcher, reload follower) run; 503 before, if loading failed, or once one of those tasks stopped."""
    state = service(request)
    state.current()
    if stopped := state.stopped_tasks():
        raise ServiceError(503, "task_stopped", f"this worker's {', '.join(stopped)} stopped; its log says why")
    return Status(status="ready")


@router.get("/info", response_model=InfoResponse, responses=errors(503))
async def info(request: Request) -> InfoResponse:
    """What is being served: the model, its training method and budget, and the gallery."""
    state = service(request)
    engine = state.current()
    config = engine.bundle.config
    model = ModelInfo(
        id=engine.model_id, arch=config["arch"], embedding_dim=engine.bundle.embedding_dim,
        input_size=engine.bundle.input_size, channels=engine.bundle.channels, metric=config.get("metric", "N"),
        method=config.get("method"), eps=config.get("eps"), recall_at_1=config.get("R@1"), ers=config.get("ERS"),
        robustness=config.get("robustness"),
    )
    index = IndexInfo(id=engine.index_id, generation=engine.index_id.rsplit("-", 1)[0], count=engine.count,
                      dim=engine.bundle.embedding_dim,
                      metric=config.get("metric", "N"), type=engine.index.index_type,
                      thumbnails=engine.index.thumbnails is not None)
    settings = state.settings
    limits = Limits(max_pixels=max_pixels(settings, engine.bundle),
                    max_request_pixels=request_pixels(settings, engine.bundle),
                    **settings.model_dump(include=set(Limits.model_fields) - {"max_pixels", "max_request_pixels"}))
    return InfoResponse(model=model, index=index, probe_enabled=settings.enable_probe, attacks=list(PROBE_ATTACKS),
                        worker=os.getpid(), serving_seq=state.serving_seq, limits=limits)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(service(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
