"""The demo intranet page at ``/``: what a newcomer sees after ``make run``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from channels.webchat.pages import html_page

STATIC_DIR = Path(__file__).resolve().parent / "static"


def demo_router() -> APIRouter:
    router = APIRouter(tags=["demo"])

    @router.get("/", include_in_schema=False)
    async def home() -> Response:
        return html_page(STATIC_DIR / "demo.html")

    @router.get("/demo.css", include_in_schema=False)
    async def demo_css() -> FileResponse:
        return FileResponse(STATIC_DIR / "demo.css", media_type="text/css; charset=utf-8")

    return router
