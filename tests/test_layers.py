"""The import picture of docs/architecture.md, checked by import-linter over every module (function-level imports
included): serve and training are sibling wings over retrieval; only the entry point serve.cli imports both."""

from __future__ import annotations

from pathlib import Path

from importlinter.cli import lint_imports

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_wings_import_only_the_bottom_layer(capsys) -> None:
    code = lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out
