"""The `robust-retrieval` command, the console script's home: one typer app that registers each package's commands.

This is the one module that imports both wings (training and serve, each over retrieval); every command is a plain
function with explicit typer options, written beside the code it runs.
"""

from __future__ import annotations

import sys

import typer

from retrieval.errors import UserError
from retrieval.gallery.command import index
from serve.command import serve
from training.cli import report, train
from training.evaluate import evaluate
from training.export import export

app = typer.Typer(
    name="robust-retrieval",
    help="Adversarially robust image retrieval: train, evaluate, export, index and serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"show_default": True},
)
for command in (train, evaluate, report, export, index, serve):
    app.command()(command)


def main() -> None:
    try:
        app()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
