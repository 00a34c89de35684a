"""Micro-batching of search queries: the queries waiting when a CPU slot frees up share one onnxruntime call and one
FAISS search, so per-request overhead is paid once per batch and a burst is answered in a few large steps instead of
many small ones (which is what evens out tail latency).

A batch takes its queries in arrival order, all of one Engine (index generation): a query that read another engine
waits for the next batch. It waits at most `max_wait_s` for more queries, and only while requests are known to be on
their way (counted by `arriving`), so a lone request never waits. Queries arrive decoded (serve/uploads.py decodes
them in the decoding processes, so a bad image fails only its own request and no decode runs here).

Hand-written rather than a library because the batch must respect the engine grouping.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass
from typing import Iterator

import anyio
import torch

from serve.engine import Engine
from serve.metrics import Metrics
from serve.schemas import SearchHit
from serve.settings import Settings

MAX_WAIT_S = 0.002
"""Longest a batch waits for requests still reading their body (a small fraction of one query's cost)."""


@dataclass(frozen=True)
class _Query:
    engine: Engine
    image: torch.Tensor
    """[1, C, H, W], decoded."""
    top_k: int
    answer: asyncio.Future


class SearchBatcher:
    """Queues queries from the routes; `run` (a task of the app's lifespan) answers them in batches."""

    def __init__(self, settings: Settings, metrics: Metrics, slots: anyio.CapacityLimiter, *,
                 max_wait_s: float = MAX_WAIT_S) -> None:
        self.settings, self.metrics, self.slots, self.max_wait_s = settings, metrics, slots, max_wait_s
        self._queue: collections.deque[_Query] = collections.deque()
        self._wake = asyncio.Event()
        self._arriving = 0

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Around a request's body read: tells a forming batch that one more query is on its way."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            self._wake.set()

    async def search(self, engine: Engine, images: torch.Tensor, top_k: int) -> list[list[SearchHit]]:
        """Rankings of the decoded `images` [N, C, H, W] in `engine`."""
        loop = asyncio.get_running_loop()
        queries = [_Query(engine, image[None], top_k, loop.create_future()) for image in images]
        self._queue.extend(queries)
        self._wake.set()
        answers = await asyncio.gather(*(q.answer for q in queries), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return answers

    async def run(self) -> None:
        """One consumer per CPU slot, each taking the next batch when it is free."""
        async with anyio.create_task_group() as tasks:
            for _ in range(int(self.slots.total_tokens)):
                tasks.start_soon(self._consume)

    async def _consume(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                if self._alone():
                    async with self.slots:
                        answers = self._answer(batch)
                else:
                    answers = await anyio.to_thread.run_sync(self._answer, batch, limiter=self.slots)
            except Exception as exc:  # noqa: BLE001  (a consumer must outlive any one batch; the batch shares it)
                answers = [exc] * len(batch)
            for query, answer in zip(batch, answers):
                if query.answer.done():  # the client went away
                    continue
                if isinstance(answer, BaseException):
                    query.answer.set_exception(answer)
                else:
                    query.answer.set_result(answer)

    def _alone(self) -> bool:
        """Whether this batch is the only work in sight, so a thread hop (about 0.5 ms of CPU) would overlap it with
        nothing: one CPU slot, or no other batch running and no query queued or arriving."""
        return self.slots.total_tokens == 1 or not (self.slots.borrowed_tokens or self._queue or self._arriving)

    async def _next_batch(self) -> list[_Query]:
        await asyncio.sleep(0)  # let requests whose bytes are already here reach the queue first
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()
        engine = self._queue[0].engine
        batch = self._take(engine, self.settings.max_batch)
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(batch) < self.settings.max_batch and self._arriving:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)
            batch += self._take(engine, self.settings.max_batch - len(batch))
        return batch

    def _take(self, engine: Engine, limit: int) -> list[_Query]:
        """Up to `limit` queued queries of `engine`, oldest first; the others keep their place."""
        taken, kept = [], collections.deque()
        while self._queue and len(taken) < limit:
            query = self._queue.popleft()
            if query.answer.done():
                continue
            (taken if query.engine is engine else kept).append(query)
        self._queue.extendleft(reversed(kept))
        return taken

    def _answer(self, batch: list[_Query]) -> list[list[SearchHit]]:
        """One embed and one search for the whole batch."""
        engine = batch[0].engine
        embeddings, embed_s = engine.embed(torch.cat([query.image for query in batch]))
        rankings, search_s = engine.search(embeddings, max(query.top_k for query in batch))
        self.metrics.embed.observe(embed_s)
        self.metrics.search.observe(search_s)
        self.metrics.batch_size.observe(len(batch))
        return [hits[:query.top_k] for query, hits in zip(batch, rankings)]
