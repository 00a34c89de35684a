"""The web page at `/`: plain HTML, CSS and JavaScript shipped inside the package (no CDN, no build step), so it
works offline and is versioned with the API it calls."""

from __future__ import annotations

from pathlib import Path

import anyio
from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Scope

STATIC = Path(__file__).resolve().parents[1] / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Only the page's own files run; uploads are previewed from blob: URLs and probe images arrive as data: URLs."""

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                                                        "Cache-Control": "no-cache"})


@router.api_route("/favicon.ico", methods=["GET", "HEAD"])
async def favicon() -> FileResponse:
    """The page links its icon; this answers clients that ask the conventional address instead."""
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


class PageAssets(StaticFiles):
    """The page's scripts and styles, mounted at /static; the page itself only at `/`, where its CSP is set."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        found, _ = await anyio.to_thread.run_sync(self.lookup_path, path)
        if found.lower().endswith(".html"):  # the file it resolves to, however the path spells it
            raise HTTPException(404)
        return await super().get_response(path, scope)


def static_files() -> StaticFiles:
    return PageAssets(directory=STATIC)
