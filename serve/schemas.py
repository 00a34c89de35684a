"""Pydantic models of every response (and JSON request) so that /docs and /openapi.json describe the API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable reason, e.g. 'image_too_large'.")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class SearchHit(BaseModel):
    id: int = Field(description="Gallery item id in the index.")
    rank: int = Field(description="1-based position in the ranking.")
    score: float = Field(description="Cosine similarity of the unit-norm embeddings (higher is closer; distance = sqrt(2 - 2 score)).")
    label: int | str | None = None
    class_name: str | None = Field(
        None, description="Name of the label where the index records it (e.g. 'Ankle boot'); null for indexes built "
        "without names.")
    metadata: dict[str, Any] = Field(default_factory=dict)


class SearchResponse(BaseModel):
    results: list[SearchHit]
    model_id: str
    index_id: str
    took_ms: float


class BatchItem(BaseModel):
    results: list[SearchHit]


class BatchSearchResponse(BaseModel):
    items: list[BatchItem] = Field(description="One ranking per uploaded image, in upload order.")
    model_id: str
    index_id: str
    took_ms: float


class FlipSearch(BaseModel):
    """Bisection over the eps grid for the smallest budget that changes the top-1."""

    min_flip_eps: float | None = Field(description="Smallest grid eps that changed the top-1; None if even `eps` did not.")
    grid_step: float = Field(description="Spacing of the eps grid (1/255).")
    trials: int
    steps_per_trial: int
    truncated: bool = Field(description="The time limit stopped the bisection; min_flip_eps is an upper bound.")


class ProbeResponse(BaseModel):
    attack: str
    eps: float
    steps: int
    schedule: str = Field(description="apgd (the strong attacker's schedule) or fixed (the published steps).")
    top_k: int
    clean: list[SearchHit]
    adversarial: list[SearchHit]
    top1_changed: bool
    overlap_at_k: float = Field(description="|clean top-k ∩ adversarial top-k| / k.")
    clean_top1_rank_after: int = Field(description="1-based rank of the clean top-1 item in the adversarial ranking.")
    embedding_shift: float = Field(description="||e(x_adv) - e(x)||, in [0, 2].")
    attack_value: float = Field(description="The attack's own reported value (see the attack engine).")
    flip: FlipSearch
    adversarial_image_png: str | None = Field(None, description="Base64 PNG of the adversarial image when asked for.")
    clean_image_png: str | None = Field(None, description="Base64 PNG of the query as the model saw it, when asked for.")
    model_id: str
    index_id: str
    took_ms: float


class MeasuredERS(BaseModel):
    """ERS of the served model under one evaluation protocol, as `robust-retrieval evaluate` measured it."""

    ers: float
    ers_interval: list[float] = Field(description="95% bootstrap interval over the attacked queries.")
    attacker: str = Field(description="The protocol in words: budget, schedule, steps and starts.")
    queries: int | None = None
    seed: int | None = None
    date: str | None = None


class MeasuredRobustness(BaseModel):
    """What `evaluate` recorded for the served model (carried in its bundle by `export`)."""

    recall_at_1: float | None = None
    map: float | None = None
    queries: int | None = None
    date: str | None = None
    protocols: dict[str, MeasuredERS] = Field(
        description="By protocol name: the profile (rob28/rob224, the published 32-step PGD) and/or strong (APGD).")


class ModelInfo(BaseModel):
    id: str
    arch: str
    embedding_dim: int
    input_size: int
    channels: int
    metric: str
    method: str | None = None
    eps: float | None = None
    recall_at_1: float | None = None
    ers: float | None = None
    robustness: MeasuredRobustness | None = Field(None, description="Measured ERS per protocol; null if never evaluated.")


class IndexInfo(BaseModel):
    id: str
    generation: str = Field(description="The index generation directory this answer came from (gen-NNNNNN).")
    count: int
    dim: int
    metric: str
    type: str | None = Field(None, description="FAISS index type: flat, hnsw or ivf-pq.")
    thumbnails: bool = Field(False, description="Whether GET /items/{id}/thumbnail can serve previews.")


class Limits(BaseModel):
    """The limits this server enforces (what a request beyond them gets is in the README's error table)."""

    max_upload_bytes: int
    max_batch_bytes: int
    max_batch: int
    max_pixels: int
    max_request_pixels: int = Field(description="Pixels of all images of one request together.")
    decode_time_limit_s: float = Field(description="Decode seconds of all images of one request together.")
    probe_max_steps: int
    probe_time_limit_s: float
    max_header_bytes: int
    request_line_timeout_s: float = Field(description="A new connection must send its request line this soon.")
    body_timeout_s: float


class InfoResponse(BaseModel):
    model: ModelInfo
    index: IndexInfo
    probe_enabled: bool
    attacks: list[str]
    worker: int = Field(description="Process id of the worker that answered.")
    serving_seq: int = Field(description="Reloads this worker has applied (equal in every worker after a reload).")
    limits: Limits


class Status(BaseModel):
    status: str


class ReloadRequest(BaseModel):
    path: str | None = Field(None, description="New index directory inside the configured index root; None = reload the current one.")


class ReloadResponse(BaseModel):
    previous_index_id: str
    index_id: str
    count: int
