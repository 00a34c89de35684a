"""Prometheus metrics of one app, in the app's own registry (several apps can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Request counts and latencies by route and status, stage durations, and the index size."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rr_http_requests", "HTTP requests by route template, method and status.",
            ("route", "method", "status"), registry=self.registry,
        )
        self.latency = Histogram(
            "rr_http_request_duration_seconds", "HTTP request latency by route template, method and status.",
            ("route", "method", "status"), buckets=_FAST + _SLOW[6:], registry=self.registry,
        )
        self.embed = Histogram("rr_embed_duration_seconds", "onnxruntime embedding of one batch of queries.",
                               buckets=_FAST, registry=self.registry)
        self.search = Histogram("rr_search_duration_seconds", "FAISS search of one batch of queries.",
                                buckets=_FAST, registry=self.registry)
        self.batch_size = Histogram("rr_search_batch_size", "Queries answered by one embed + search (micro-batching).",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.probe = Histogram("rr_probe_duration_seconds", "A whole /probe (attack and bisection).",
                               buckets=_SLOW, registry=self.registry)
        self.index_size = Gauge("rr_index_size", "Items in the served gallery index.", registry=self.registry)
