"""The app's mutable state: the current Engine (swapped whole, never edited) and the limits on concurrent work."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import anyio

from serve.engine import Engine
from serve.errors import ServiceError
from serve.metrics import Metrics
from serve.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    engine: Engine | None = None
    """None until loaded and warmed; requests read it once, so a swap never mixes two generations in one answer."""
    reload_lock: threading.Lock = field(default_factory=threading.Lock)
    cpu_limiter: anyio.CapacityLimiter | None = None
    """Worker threads for decode + embed + search: one per CPU thread, so requests queue instead of thrashing."""
    probe_slots: threading.BoundedSemaphore | None = None
    """Probes running at once; taken without waiting, so a full house answers 429 at once."""

    def __post_init__(self) -> None:
        self.cpu_limiter = anyio.CapacityLimiter(self.settings.cpu_threads)
        self.probe_slots = threading.BoundedSemaphore(self.settings.probe_concurrency)

    def current(self) -> Engine:
        engine = self.engine
        if engine is None:
            raise ServiceError(503, "not_ready", "the model and index are still loading", headers={"Retry-After": "1"})
        return engine

    def swap(self, engine: Engine) -> Engine | None:
        """Make `engine` current in one reference assignment; requests in flight finish on the old one."""
        previous, self.engine = self.engine, engine
        self.metrics.index_size.set(engine.count)
        return previous
