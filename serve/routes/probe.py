"""POST /probe: off unless enabled, keyed when a key is set, one at a time per slot (429 when full), time-boxed."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import anyio
import torch
from fastapi import APIRouter, File, Form, Header, Request, UploadFile

from serve.errors import ServiceError
from serve.probe import ProbeRequest, default_eps, run_probe
from serve.routes import errors, service
from serve.schemas import ProbeResponse
from serve.security import check_key
from serve.uploads import decode, read_upload

router = APIRouter(tags=["probe"])
AttackName = Literal["GTT", "QA-", "QA+", "ES"]


@router.post("/probe", response_model=ProbeResponse, responses=errors(401, 403, 404, 413, 415, 422, 429, 503))
async def probe(
    request: Request,
    image: Annotated[UploadFile, File(description="Query image to attack.")],
    attack: Annotated[AttackName, Form(description="Attack from the engine's registry.")] = "GTT",
    eps: Annotated[float | None, Form(ge=0, le=1, description="L-inf budget; default: the bundle's training eps.")] = None,
    steps: Annotated[int, Form(ge=1, le=1000, description="PGD steps (at most the server's probe_max_steps).")] = 32,
    top_k: Annotated[int, Form(ge=1, le=100)] = 10,
    return_image: Annotated[bool, Form(description="Include the adversarial image as base64 PNG.")] = False,
    x_api_key: Annotated[str | None, Header(description="Required when the server has an API key.")] = None,
) -> ProbeResponse:
    """Attack the query live against the served gallery and report how its ranking moves."""
    state = service(request)
    settings = state.settings
    if not settings.enable_probe:
        raise ServiceError(404, "probe_disabled", "probes are disabled on this server (--enable-probe)")
    check_key(settings.api_key, x_api_key, header="X-API-Key", open_when_unset=True)
    if steps > settings.probe_max_steps:
        raise ServiceError(422, "too_many_steps", f"steps must be <= {settings.probe_max_steps}")
    engine = state.current()
    blob = await read_upload(image, settings)
    if not state.probe_slots.acquire(blocking=False):
        raise ServiceError(429, "probe_busy", "all probe slots are busy; retry later", headers={"Retry-After": "1"})
    try:
        req = ProbeRequest(attack=attack, eps=default_eps(engine) if eps is None else eps, steps=steps, top_k=top_k,
                           return_image=return_image, bisection_steps=min(steps, settings.probe_bisection_steps),
                           time_limit_s=settings.probe_time_limit_s)
        start = time.perf_counter()

        def work() -> ProbeResponse:
            torch.set_num_threads(settings.cpu_threads)
            return run_probe(engine, decode(blob, engine.bundle, settings), req)

        response = await anyio.to_thread.run_sync(work)
        state.metrics.probe.observe(time.perf_counter() - start)
        return response
    finally:
        state.probe_slots.release()
