"""The web page at `/`: plain HTML, CSS and JavaScript shipped inside the package (no CDN, no build step), so it
works offline and is versioned with the API it calls."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parents[1] / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Only the page's own files run; uploads are previewed from blob: URLs and probe images arrive as data: URLs."""

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                                                        "Cache-Control": "no-cache"})


def static_files() -> StaticFiles:
    """The page's scripts and styles, mounted at /static."""
    return StaticFiles(directory=STATIC)
