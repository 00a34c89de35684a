"""Service settings: command-line options and RR_* environment variables, validated once at start-up."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from retrieval.threads import available_cores

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Everything the service reads from its environment; every field can be set as RR_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="RR_", extra="ignore")

    index: Path
    """Index directory written by `robust-retrieval index`."""
    bundle: Path | None = None
    """Model bundle; None = the bundle the index was built with."""
    index_root: Path | None = None
    """`POST /admin/reload` only accepts index paths inside this directory (None = the parent of `index`)."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(1, ge=1)
    threads: int | None = Field(None, ge=1)
    """CPU threads for model/search work per worker process; None = cores // workers."""

    enable_probe: bool = False
    api_key: SecretStr | None = None
    """Required in X-API-Key for /probe; with probes on, start-up refuses to go without it unless probe_without_key."""
    probe_without_key: bool = False
    """Serve /probe to anyone (explicit, since a probe keeps a CPU busy for seconds)."""
    admin_key: SecretStr | None = None
    """Required in X-Admin-Key for /admin/* (and those routes refuse with 403 when unset)."""

    max_upload_bytes: int = Field(10 * MiB, ge=1)
    """Largest single image file; also bounds the body of single-image requests."""
    max_batch_bytes: int = Field(32 * MiB, ge=1)
    """Largest body of POST /search/batch."""
    max_pixels: int | None = Field(None, ge=1)
    """Largest decoded image (width x height), checked from the header; None = sized from the model's input
    (retrieval.protocol: 2048x2048 for the 28x28 protocol, 4096x4096 for the 224x224 one)."""
    max_request_pixels: int | None = Field(None, ge=1)
    """Pixels of all images of one request together (a /search/batch); None = 4 images at max_pixels."""
    decode_time_limit_s: float = Field(2.0, gt=0)
    """Decode seconds of all images of one request together (422 decode_time_limit beyond them)."""
    decode_processes: int | None = Field(None, ge=1)
    """Processes that decode uploads, per worker (serve.decoding); None = cpu_threads + 1, at least 2."""
    max_batch: int = Field(32, ge=1, le=256)

    max_header_bytes: int = Field(16 * 1024, ge=1024)
    """Request line plus headers; beyond it the connection gets 431 and is closed."""
    request_line_timeout_s: float = Field(2.0, gt=0)
    """A new connection that has not sent a whole request line by then is closed; until it has, it does not count
    against max_connections (so idle sockets cannot take the service's connections)."""
    header_timeout_s: float = Field(10.0, gt=0)
    """Time from a request's first byte to the end of its headers."""
    body_timeout_s: float = Field(30.0, gt=0)
    """Time to receive a whole request body (408 request_timeout beyond it)."""
    keep_alive_s: int = Field(5, ge=1)
    """An idle keep-alive connection is closed after this long."""
    max_connections: int = Field(256, ge=1)
    """Connections per worker that have sent a request line; a request on one more answers 503
    too_many_connections."""
    graceful_shutdown_s: int = Field(10, ge=1)
    """On SIGTERM, requests in flight get this long before they are cancelled."""
    worker_start_timeout_s: int = Field(120, ge=5)
    """With --workers > 1: how long the supervisor waits for a worker's health answer (start-up included)."""
    run_dir: Path | None = None
    """Set by `serve` for its workers: where the shared serving pointer of /admin/reload lives."""

    probe_concurrency: int = Field(1, ge=1)
    """Probes running at once; one more answers 429."""
    probe_max_steps: int = Field(64, ge=1)
    probe_time_limit_s: float = Field(20.0, gt=0)
    probe_bisection_steps: int = Field(8, ge=1)
    """PGD steps per trial of the smallest-flipping-eps bisection (fewer than the main attack, to fit the limit)."""

    log_level: str = "info"

    @field_validator("api_key", "admin_key")
    @classmethod
    def _printable_ascii(cls, value: SecretStr | None) -> SecretStr | None:
        """Clients send header bytes, so a key must be bytes a header can carry: visible ASCII, not empty."""
        if value is not None and not (value.get_secret_value().isascii() and value.get_secret_value().isprintable()
                                      and value.get_secret_value().strip() == value.get_secret_value() != ""):
            raise ValueError("must be non-empty printable ASCII without surrounding spaces")
        return value

    @model_validator(mode="after")
    def _probe_is_keyed_or_explicitly_open(self) -> Settings:
        if self.enable_probe and self.api_key is None and not self.probe_without_key:
            raise ValueError("--enable-probe needs --api-key (RR_API_KEY) or an explicit --probe-without-key")
        if self.probe_without_key and self.api_key is not None:
            raise ValueError("--probe-without-key contradicts --api-key; choose one")
        return self

    @cached_property
    def cpu_threads(self) -> int:
        """Threads this worker may keep busy: the configured number, or its share of the cores it may run on."""
        return self.threads or max(1, available_cores() // self.workers)

    @cached_property
    def decoders(self) -> int:
        """Decoding processes of this worker: one spare beyond its CPU threads, so a slow decode does not make every
        other upload wait."""
        return self.decode_processes or max(2, self.cpu_threads + 1)

    @cached_property
    def allowed_index_root(self) -> Path:
        return (self.index_root or self.index.resolve().parent).resolve()
