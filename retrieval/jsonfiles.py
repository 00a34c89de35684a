"""Reading the project's JSON files (manifests, configs, run files): one place that turns every way a file can be
missing or broken into a one-line UserError. Writes go through retrieval.atomic."""

from __future__ import annotations

import json
from pathlib import Path

from retrieval.errors import UserError


def read_json(path: Path, what: str, *, missing_ok: bool = False) -> dict:
    """The JSON object in `path`; {} for a missing file when `missing_ok`. `what` names the file in errors."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise UserError(f"{what} file {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{what} file {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} file {path} must hold a JSON object")
    return data
