"""Micro-batching (serve.batching): queries answered together get exactly the answers they get alone, and a batch
never mixes two index generations. Real ONNX model, real FAISS indexes."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from retrieval.images import decode_image
from serve.batching import SearchBatcher
from serve.engine import load_engine, load_index
from serve.metrics import Metrics
from tests.support.artifacts import write_index
from tests.support.service import png

DEADLINE_S = 60


@pytest.fixture(scope="module")
def engines(artifacts, make_settings):
    """Generation A (the test gallery) and B (another 300 images of the same model): different answers."""
    from retrieval.datasets import load_dataset

    first = load_engine(artifacts.index, artifacts.bundle, threads=1, with_torch=False)
    train = load_dataset("fashion-mnist", "train")
    other = artifacts.root / "batching-other"
    write_index(artifacts.bundle, train.tensors()[:300], train.labels[:300], other,
                [train.source(i) for i in range(300)])
    return first, load_index(first, other)


def answer(settings, queries, *, slots: int = 1):
    """Queue every (engine, image, top_k) before the batcher runs, so they are taken together; returns the answers
    (hit lists or the exception) and the sizes of the batches that ran."""
    metrics = Metrics()

    async def main():
        batcher = SearchBatcher(settings, metrics, anyio.CapacityLimiter(slots))
        calls = [asyncio.ensure_future(batcher.search(engine, decode_image(image, size=28, channels=1)[None], top_k))
                 for engine, image, top_k in queries]
        await asyncio.sleep(0)  # every call is queued now
        consumer = asyncio.ensure_future(batcher.run())
        try:
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), DEADLINE_S)
        finally:
            consumer.cancel()

    answers = asyncio.run(main())
    sizes = metrics.batch_size.collect()[0].samples
    count = next(s.value for s in sizes if s.name.endswith("_count"))
    total = next(s.value for s in sizes if s.name.endswith("_sum"))
    return [a if isinstance(a, BaseException) else a[0] for a in answers], (count, total)


def alone(settings, engine, image, top_k):
    [hits], batches = answer(settings, [(engine, image, top_k)])
    assert batches == (1, 1)
    return hits


def plain(hits):
    return [(h.id, h.rank, h.score, h.label) for h in hits]


@pytest.mark.parametrize("slots", [1, 2], ids=["inline", "thread"])
def test_batched_queries_get_exactly_their_answers_alone(engines, artifacts, make_settings, slots):
    settings, (engine, _) = make_settings(), engines
    images = [png(q) for q in artifacts.queries[:12]]
    top_ks = [1 + (i * 7) % 20 for i in range(len(images))]  # different k in one batch
    batched, batches = answer(settings, [(engine, im, k) for im, k in zip(images, top_ks)], slots=slots)
    assert batches == (1, len(images))  # one embed + one search answered all twelve
    for image, k, hits in zip(images, top_ks, batched):
        assert len(hits) == k
        assert plain(hits) == plain(alone(settings, engine, image, k))


def test_a_batch_never_mixes_two_index_generations(engines, artifacts, make_settings):
    """Queries that read generation A and B before a reload are interleaved in the queue: each is answered from its
    own generation, in a batch of its own generation only."""
    settings, (old, new) = make_settings(), engines
    images = [png(q) for q in artifacts.queries[:8]]
    queries = [(old if i % 2 == 0 else new, image, 5) for i, image in enumerate(images)]
    batched, batches = answer(settings, queries)
    assert batches == (2, len(images))  # all of A together, then all of B
    for (engine, image, k), hits in zip(queries, batched):
        assert plain(hits) == plain(alone(settings, engine, image, k))
    ids_old = {h.id for (e, _, _), hits in zip(queries, batched) if e is old for h in hits}
    ids_new = {h.id for (e, _, _), hits in zip(queries, batched) if e is new for h in hits}
    assert ids_old and ids_new and not ids_old & ids_new  # the two galleries share no item


def test_search_accepts_a_raw_image_body(client, artifacts):
    image = png(artifacts.queries[0])
    form = client.post("/search", files={"image": ("q.png", image, "image/png")}, data={"top_k": "7"})
    raw = client.post("/search", params={"top_k": 7}, content=image, headers={"Content-Type": "image/png"})
    assert raw.status_code == 200, raw.text
    assert raw.json()["results"] == form.json()["results"] and len(raw.json()["results"]) == 7
    bad = client.post("/search", content=b"not an image", headers={"Content-Type": "image/png"})
    assert bad.status_code == 415 and bad.json()["error"]["code"] == "unsupported_image_format"
    assert bad.headers["X-Request-ID"]
    cap = client.get("/info").json()["limits"]["max_upload_bytes"]
    big = client.post("/search", content=image + bytes(cap + 1 - len(image)), headers={"Content-Type": "image/png"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "image_too_large"
