"""POST /probe: off unless enabled, keyed unless explicitly open (both checked before the body is read), one at a
time per slot (429 when full), and time-boxed from the start: decoding and the attack share one deadline."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from retrieval.robustness.pgd import SCHEDULES
from serve.errors import ServiceError
from serve.probe import PROBE_ATTACKS, ProbeRequest, default_eps, probe_time_limit, run_probe
from serve.routes import errors, service
from serve.schemas import ProbeResponse
from serve.security import GuardedRoute, api_key, probe_enabled
from serve.uploads import decode_all, read_upload

router = APIRouter(tags=["probe"], route_class=GuardedRoute)
AttackName = Literal[PROBE_ATTACKS]  # the one list of probe-able attacks, validated and shown in the OpenAPI enum
Schedule = Literal[SCHEDULES]


@router.post("/probe", response_model=ProbeResponse, dependencies=[Depends(probe_enabled), Depends(api_key)],
             responses=errors(400, 401, 403, 404, 408, 413, 415, 422, 429, 503))
async def probe(
    request: Request,
    image: Annotated[UploadFile, File(description="Query image to attack.")],
    attack: Annotated[AttackName, Form(description="Attack from the engine's registry.")] = "GTT",
    eps: Annotated[float | None, Form(ge=0, le=1, description="L-inf budget; default: the bundle's training eps.")] = None,
    steps: Annotated[int, Form(ge=1, description="PGD steps, at most the server's probe_max_steps (/info limits; "
                                                 "422 too_many_steps beyond).")] = 32,
    schedule: Annotated[Schedule, Form(description="apgd: the strong attacker's step-size schedule (momentum, halving "
                                                   "on stalls); fixed: the published protocol's steps of the "
                                                   "profile's alpha.")] = "apgd",
    top_k: Annotated[int, Form(ge=1, le=100)] = 10,
    return_image: Annotated[bool, Form(description="Include the adversarial image as base64 PNG.")] = False,
) -> ProbeResponse:
    """Attack the query live against the served gallery and report how its ranking moves."""
    state = service(request)
    settings = state.settings
    deadline = time.monotonic() + settings.probe_time_limit_s
    if steps > settings.probe_max_steps:
        raise ServiceError(422, "too_many_steps", f"steps must be <= {settings.probe_max_steps}")
    engine = state.current()
    blob = await read_upload(image, settings)
    if not state.probe_slots.acquire(blocking=False):
        raise ServiceError(429, "probe_busy", "all probe slots are busy; retry later", headers={"Retry-After": "1"})
    try:
        req = ProbeRequest(attack=attack, eps=default_eps(engine) if eps is None else eps, steps=steps,
                           schedule=schedule, top_k=top_k,
                           return_image=return_image, bisection_steps=min(steps, settings.probe_bisection_steps),
                           time_limit_s=settings.probe_time_limit_s, deadline=deadline)
        start = time.perf_counter()
        try:
            query = await decode_all(state.decoder, [blob], engine.bundle, settings, deadline=deadline)
        except ServiceError as exc:
            if exc.code == "decode_time_limit" and time.monotonic() >= deadline:
                raise probe_time_limit(req) from None
            raise
        response = await anyio.to_thread.run_sync(run_probe, engine, query, req)
        state.metrics.probe.observe(time.perf_counter() - start)
        return response
    finally:
        state.probe_slots.release()
