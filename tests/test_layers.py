"""The import picture of docs/architecture.md, checked by import-linter over every module (function-level imports
included): serve -> training -> retrieval, and the defenses never import training.method."""

from __future__ import annotations

from pathlib import Path

from importlinter.cli import lint_imports

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_imports_point_one_way(capsys) -> None:
    code = lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out
