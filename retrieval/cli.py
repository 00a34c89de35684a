"""Commands owned by retrieval: index, report."""

from __future__ import annotations

from pathlib import Path

import typer

from retrieval.index_command import index


def report(
    runs: list[Path] = typer.Argument(..., help="Run directories evaluated with `robust-retrieval evaluate`."),
    out: Path = typer.Option(..., "-o", "--out", help="Directory for report.md/.json and the plots."),
) -> None:
    """One table of several runs (the paper's column order) plus ERS-vs-cost, R@1-vs-ERS and per-run attack plots."""
    from retrieval.report import write_report

    for path in write_report(runs, out):
        typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add this package's commands to the root app."""
    app.command()(report)
    app.command()(index)
