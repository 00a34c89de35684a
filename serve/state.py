"""The app's mutable state: the current Engine (swapped whole, never edited), the limits on concurrent work, and
the serving pointer that keeps several worker processes on one index.

With --workers > 1 each worker holds its own Engine, so a reload that swapped only the worker it reached would split
the service between two indexes. `serve` gives its workers a shared run directory: a reload writes the new index
path there with a sequence number (serving.json, replaced atomically), every worker follows it (polling its mtime
every FOLLOW_INTERVAL_S, then loading and warming the index itself) and acknowledges the sequence number it serves
(acks/<pid>; the temporaries of those atomic writes are other workers' files, never read or deleted); the reload
answers only when every live worker has acknowledged, and a restarted worker starts from the pointer, not from the
command line's index.

The search batcher and the pointer's follower are background tasks of their own (not one task group, where one
failure cancels the rest): the follower logs and retries any failure, and /readyz answers 503 while either is not
running, so a worker that cannot serve or cannot follow reloads is taken out of rotation instead of wedging quietly.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import anyio
from prometheus_client import Gauge

from retrieval.atomic import atomic_write_text
from retrieval.errors import UserError
from serve.decoding import DecodePool
from serve.engine import Engine, load_index
from serve.errors import ServiceError
from serve.metrics import Metrics
from serve.settings import Settings

log = logging.getLogger(__name__)
FOLLOW_INTERVAL_S = 0.1
FOLLOW_RETRY_S = 1.0
"""Pause after a failed attempt to follow the pointer, before trying again."""
RELOAD_ALL_TIMEOUT_S = 120.0
POINTER_FILE = "serving.json"


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    engine: Engine | None = None
    """None until loaded and warmed; requests read it once, so a swap never mixes two generations in one answer."""
    serving_seq: int = 0
    """The reload sequence number this worker serves (0: the index given at start-up)."""
    reload_lock: threading.Lock = field(default_factory=threading.Lock)
    cpu_limiter: anyio.CapacityLimiter | None = None
    """Worker threads for decode + embed + search: one per CPU thread, so requests queue instead of thrashing."""
    probe_slots: threading.BoundedSemaphore | None = None
    """Probes running at once; taken without waiting, so a full house answers 429 at once."""
    decoder: DecodePool | None = None
    """The decoding processes (serve.decoding), started and stopped by the app's lifespan."""
    tasks: dict[str, asyncio.Task] = field(default_factory=dict)
    """Background tasks that must keep running for this worker to be ready (start_task)."""
    stopping: bool = False

    def __post_init__(self) -> None:
        self.cpu_limiter = anyio.CapacityLimiter(self.settings.cpu_threads)
        self.probe_slots = threading.BoundedSemaphore(self.settings.probe_concurrency)
        Gauge("rr_cpu_slots", "Threads for decode, embed and search in this worker.",
              registry=self.metrics.registry).set(self.settings.cpu_threads)
        Gauge("rr_cpu_slots_busy", "Of rr_cpu_slots, those busy now (equal: new requests queue).",
              registry=self.metrics.registry).set_function(lambda: self.cpu_limiter.borrowed_tokens)
        Gauge("rr_cpu_slots_waiting", "Requests waiting for a CPU slot.",
              registry=self.metrics.registry).set_function(lambda: self.cpu_limiter.statistics().tasks_waiting)

    def current(self) -> Engine:
        engine = self.engine
        if engine is None:
            raise ServiceError(503, "not_ready", "the model and index are still loading", headers={"Retry-After": "1"})
        return engine

    def start_task(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run()` as a background task of its own; its end, other than at shutdown, is logged."""
        task = asyncio.create_task(run(), name=name)
        task.add_done_callback(self._task_ended)
        self.tasks[name] = task

    def stopped_tasks(self) -> list[str]:
        """Names of the background tasks that are no longer running."""
        return [name for name, task in self.tasks.items() if task.done()]

    def _task_ended(self, task: asyncio.Task) -> None:
        if self.stopping:
            return
        error = None if task.cancelled() else task.exception()
        log.error("background task %s stopped (%s); /readyz answers 503", task.get_name(),
                  "cancelled" if task.cancelled() else repr(error) if error else "returned", exc_info=error)

    def swap(self, engine: Engine) -> Engine | None:
        """Make `engine` current in one reference assignment; requests in flight finish on the old one."""
        previous, self.engine = self.engine, engine
        self.metrics.index_size.set(engine.count)
        return previous

    # The shared serving pointer (only with a run directory, i.e. under `serve`).

    def startup_settings(self) -> Settings:
        """The settings to load with: a worker (re)started after a reload starts on the reloaded index."""
        pointer = self._read_pointer()
        if pointer is None:
            return self.settings
        self.serving_seq = pointer["seq"]
        return self.settings.model_copy(update={"index": Path(pointer["path"])})

    def loaded(self) -> None:
        """Called once the start-up engine is current: acknowledge the sequence number it serves."""
        self._acknowledge()

    async def publish(self, index_path: Path) -> None:
        """After this worker swapped to `index_path`: point every worker at it and wait until all serve it."""
        if self.settings.run_dir is None:
            return
        with open(self.settings.run_dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            pointer = self._read_pointer() or {"seq": 0}
            self.serving_seq = pointer["seq"] + 1
            atomic_write_text(self._pointer_path(), json.dumps({"seq": self.serving_seq, "path": str(index_path)}))
        self._acknowledge()
        deadline = time.monotonic() + RELOAD_ALL_TIMEOUT_S
        while (behind := self.settings.workers - self._workers_serving(self.serving_seq)) > 0:
            if time.monotonic() > deadline:
                raise ServiceError(503, "reload_incomplete", f"{behind} worker(s) did not switch to the new index "
                                   f"within {RELOAD_ALL_TIMEOUT_S:.0f} s; their log says why")
            await anyio.sleep(FOLLOW_INTERVAL_S / 2)

    async def follow(self) -> None:
        """Background task of every worker (under `serve`): load the index a reload in another worker pointed at.
        Any failure is logged and retried; only cancellation ends it."""
        while True:
            await anyio.sleep(FOLLOW_INTERVAL_S)
            try:
                await self._follow_once()
            except Exception:  # noqa: BLE001  (a follower that ended would leave this worker behind for good)
                log.exception("cannot follow the serving pointer; retrying in %.0f s", FOLLOW_RETRY_S)
                await anyio.sleep(FOLLOW_RETRY_S)

    async def _follow_once(self) -> None:
        pointer = self._read_pointer()
        engine = self.engine
        if engine is None or pointer is None or pointer["seq"] <= self.serving_seq:
            return
        if not self.reload_lock.acquire(blocking=False):
            return  # this worker is publishing a reload itself; it acknowledges its own
        try:
            new = await anyio.to_thread.run_sync(load_index, engine, Path(pointer["path"]))
        except UserError as exc:
            log.error("cannot follow reload %d to %s: %s", pointer["seq"], pointer["path"], exc)
            self.serving_seq = pointer["seq"]  # do not retry in a loop; the reloading worker reports 503
            return
        finally:
            self.reload_lock.release()
        self.swap(new)
        self.serving_seq = pointer["seq"]
        self._acknowledge()
        log.info("followed reload %d: now serving %s (%d items)", self.serving_seq, new.index_id, new.count)

    def _pointer_path(self) -> Path:
        return self.settings.run_dir / POINTER_FILE

    def _read_pointer(self) -> dict | None:
        if self.settings.run_dir is None:
            return None
        try:
            return json.loads(self._pointer_path().read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def _acknowledge(self) -> None:
        if self.settings.run_dir is not None:
            acks = self.settings.run_dir / "acks"
            acks.mkdir(exist_ok=True)
            atomic_write_text(acks / str(os.getpid()), str(self.serving_seq))

    def _workers_serving(self, seq: int) -> int:
        """Live worker processes whose acknowledged sequence number is at least `seq`. Only acknowledgements (files
        named by a pid) are read: anything else is another worker's write in progress."""
        count = 0
        for ack in (self.settings.run_dir / "acks").iterdir():
            if not ack.name.isdigit():
                continue
            try:
                os.kill(int(ack.name), 0)
            except ProcessLookupError:
                ack.unlink(missing_ok=True)  # a worker that died (uvicorn starts a new one with a new pid)
                continue
            try:
                count += int(ack.read_text()) >= seq
            except FileNotFoundError:
                continue  # removed by another worker that saw its process gone
        return count
