"""The `robust-retrieval` command: one typer app whose subcommands come from the packages that own them."""

from __future__ import annotations

import sys

import typer

from retrieval import cli as retrieval_cli
from retrieval.errors import UserError
from training import cli as training_cli

app = typer.Typer(
    name="robust-retrieval",
    help="Adversarially robust image retrieval: train, evaluate, export, index and serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"show_default": True},
)
training_cli.register(app)
retrieval_cli.register(app)


@app.command()
def serve(
    index: str = typer.Argument(..., help="Index directory written by `robust-retrieval index`."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes."),
) -> None:
    """Serve /search and /probe over an indexed gallery."""
    from serve.app import run  # imported late: the web stack is not needed by the other commands

    run(index=index, host=host, port=port, workers=workers)


def main() -> None:
    try:
        app()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
