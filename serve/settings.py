"""Service settings: command-line options and RR_* environment variables, validated once at start-up."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    """Required in X-API-Key for /probe (and /probe refuses when unset)."""
    admin_key: SecretStr | None = None
    """Required in X-Admin-Key for /admin/* (and those routes refuse when unset)."""

    max_upload_bytes: int = Field(10 * MiB, ge=1)
    """Largest single image file; also bounds the body of single-image requests."""
    max_batch_bytes: int = Field(32 * MiB, ge=1)
    """Largest body of POST /search/batch."""
    max_pixels: int = Field(4096 * 4096, ge=1)
    """Largest decoded image (width x height); checked from the header before decoding."""
    max_batch: int = Field(32, ge=1, le=256)

    probe_concurrency: int = Field(1, ge=1)
    """Probes running at once; one more answers 429."""
    probe_max_steps: int = Field(64, ge=1)
    probe_time_limit_s: float = Field(20.0, gt=0)
    probe_bisection_steps: int = Field(8, ge=1)
    """PGD steps per trial of the smallest-flipping-eps bisection (fewer than the main attack, to fit the limit)."""

    log_level: str = "info"

    @field_validator("api_key", "admin_key")
    @classmethod
    def _empty_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @cached_property
    def cpu_threads(self) -> int:
        """Threads this worker may keep busy: the configured number, or its share of the cores."""
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)

    @cached_property
    def allowed_index_root(self) -> Path:
        return (self.index_root or self.index.resolve().parent).resolve()
