"""Commands owned by retrieval: index."""

from __future__ import annotations

import typer

from retrieval.index_command import index


def register(app: typer.Typer) -> None:
    """Add this package's commands to the root app."""
    app.command()(index)
