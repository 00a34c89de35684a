"""The FastAPI application: settings -> app, background loading in `lifespan`, middleware, routes (served by
serve.server)."""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

import anyio
from fastapi import FastAPI

from retrieval.errors import UserError
from retrieval.threads import use_torch_threads
from serve.batching import SearchBatcher
from serve.decoding import DecodePool
from serve.engine import Engine, load_engine
from serve.errors import install_error_handlers
from serve.metrics import Metrics
from serve.middleware.body_limit import BodyLimitMiddleware
from serve.middleware.catch_all import CatchAllMiddleware
from serve.middleware.metrics import MetricsMiddleware
from serve.middleware.request_id import RequestIdMiddleware
from serve.middleware.security_headers import SecurityHeadersMiddleware
from serve.routes import admin, errors, health, items, page, probe, search
from serve.settings import Settings
from serve.state import ServiceState

log = logging.getLogger("serve")
Loader = Callable[[Settings], Engine]
_MULTIPART_OVERHEAD = 64 * 1024
_SMALL_BODY = 64 * 1024


def default_loader(settings: Settings) -> Engine:
    return load_engine(settings.index, settings.bundle, threads=1, with_torch=settings.enable_probe)


def create_app(settings: Settings, *, loader: Loader = default_loader) -> FastAPI:
    """An app that starts answering at once (/livez 200, /readyz 503) and becomes ready when `loader` succeeds."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServiceState(settings, metrics, decoder=DecodePool(settings.decoders))
        app.state.service = state
        app.state.batcher = SearchBatcher(settings, metrics, state.cpu_limiter)
        use_torch_threads(settings.cpu_threads)  # once: request threads adopt it (retrieval.threads)
        loading = asyncio.create_task(_load(state, loader))
        state.start_task("search batcher", app.state.batcher.run)
        if settings.run_dir is not None:
            state.start_task("reload follower", state.follow)  # other workers' reloads (serve.state)
        try:
            yield
        finally:
            state.stopping = True
            for task in (loading, *state.tasks.values()):
                task.cancel()
            await asyncio.gather(loading, *state.tasks.values(), return_exceptions=True)
            await anyio.to_thread.run_sync(state.decoder.close)

    app = FastAPI(title="robust-retrieval", version="0.1.0", lifespan=lifespan,
                  description="Image retrieval over a FAISS gallery with live adversarial robustness probes.",
                  responses=errors(408, 431, 500, 503))  # any route: transport limits (serve.server), bugs
    install_error_handlers(app)
    for module in (search, probe, health, admin, items, page):
        app.include_router(module.router)
    app.mount("/static", page.static_files(), name="static")
    app.add_middleware(BodyLimitMiddleware, limit_for=lambda path: _body_limit(settings, path),
                       timeout_s=settings.body_timeout_s)
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeadersMiddleware)  # outside the catch-all: its 500s get the headers too
    app.add_middleware(RequestIdMiddleware)  # added last = outermost: every log line of a request has its id
    return app


async def _load(state: ServiceState, loader: Loader) -> None:
    """Load off the event loop; a bad model or index leaves the service unready with one clear error line."""
    try:
        engine = await anyio.to_thread.run_sync(loader, state.startup_settings(), abandon_on_cancel=True)
        await state.decoder.warm()
    except UserError as exc:
        log.error("not ready: %s", exc)
        return
    except Exception:
        log.exception("not ready: unexpected error while loading")
        return
    state.swap(engine)
    state.loaded()
    gc.freeze()  # imports and the engine never die: keep them out of full collections (p99 at c=32: 240 -> 50 ms)
    log.info("ready: model %s (%s), index %s with %d items, %d cpu threads", engine.model_id,
             engine.bundle.config.get("method") or engine.bundle.config["arch"], engine.index_id, engine.count,
             state.settings.cpu_threads)


def _body_limit(settings: Settings, path: str) -> int:
    if path == "/search/batch":
        return settings.max_batch_bytes
    if path in ("/search", "/probe"):
        return settings.max_upload_bytes + _MULTIPART_OVERHEAD
    return _SMALL_BODY
