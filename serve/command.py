"""The `serve` command: the service over an indexed gallery."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def serve(
    index: Path = typer.Argument(..., help="Index directory written by `robust-retrieval index`."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes."),
    bundle: Optional[Path] = typer.Option(None, help="Model bundle (default: the one the index records)."),
    index_root: Optional[Path] = typer.Option(None, help="/admin/reload paths must lie here (default: INDEX's parent)."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads per worker (default: cores // workers)."),
    enable_probe: Optional[bool] = typer.Option(None, "--enable-probe/--disable-probe", help="Serve /probe (env RR_ENABLE_PROBE)."),
    api_key: Optional[str] = typer.Option(None, help="X-API-Key for /probe; prefer env RR_API_KEY (argv is visible)."),
    probe_without_key: Optional[bool] = typer.Option(
        None, "--probe-without-key", help="Serve /probe without a key (env RR_PROBE_WITHOUT_KEY); else --enable-probe needs one."),
    admin_key: Optional[str] = typer.Option(None, help="X-Admin-Key for /admin; prefer env RR_ADMIN_KEY."),
    log_level: Optional[str] = typer.Option(None, help="debug | info | warning | error."),
) -> None:
    """Serve /search, /probe, /info, health and metrics over an indexed gallery (settings also from RR_* env, e.g.
    the transport limits RR_MAX_HEADER_BYTES, RR_BODY_TIMEOUT_S, RR_MAX_CONNECTIONS; see the README)."""
    from serve.server import run  # imported late: the web stack is not needed by the other commands

    run(index=index, host=host, port=port, workers=workers, bundle=bundle, index_root=index_root, threads=threads,
        enable_probe=enable_probe, api_key=api_key, probe_without_key=probe_without_key, admin_key=admin_key,
        log_level=log_level)
