"""HTML responses with the strict Content-Security-Policy every deskbot page carries."""

from __future__ import annotations

from pathlib import Path

from fastapi.responses import HTMLResponse

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def html_page(path: Path) -> HTMLResponse:
    """A static HTML file, with the security headers."""
    return HTMLResponse(path.read_text(encoding="utf-8"), headers=dict(SECURITY_HEADERS))
