"""HTTP and WebSocket endpoints of the web chat widget.

``POST /webchat/session`` mints a visitor key and its signed token (optionally with a
verified identity); ``WS /webchat/ws`` carries the conversation; ``GET /webchat/history``
returns the visitor's own transcript; the widget's script and style are static files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response

from bot.errors import RejectedInput
from channels.base import HandleResult, Inbound
from channels.webchat.channel import WebChatChannel
from channels.webchat.convert import (
    VisitorSession,
    VisitorTokens,
    inbound_from_frame,
    new_visitor_key,
    valid_client_id,
    verify_identity,
)
from channels.webchat.guards import RateLimiter, origin_allowed, origin_of
from channels.webchat.history import VisitorHistory

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"

CLOSE_FORBIDDEN = 4403
CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_LARGE = 1009


@dataclass(frozen=True, slots=True)
class WebChatConfig:
    """The web chat's knobs, taken from the settings by the composition root."""

    secret_key: str
    identity_secret: str | None = None
    require_identity: bool = False
    allowed_origins: tuple[str, ...] = ()
    rate_per_minute: int = 30
    max_message_chars: int = 4000
    sessions_per_minute: int = 30


def _static(name: str, media_type: str) -> FileResponse:
    return FileResponse(
        STATIC_DIR / name,
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
    )


def webchat_router(
    *,
    config: WebChatConfig,
    channel: WebChatChannel,
    handle: Callable[[Inbound], Awaitable[HandleResult]],
    history: VisitorHistory,
) -> APIRouter:
    """The widget's endpoints, bound to the core's ``handle`` and the channel."""
    router = APIRouter(prefix="/webchat", tags=["webchat"])
    tokens = VisitorTokens(config.secret_key)
    message_limiter = RateLimiter(config.rate_per_minute)
    session_limiter = RateLimiter(config.sessions_per_minute)
    allowed = config.allowed_origins
    max_frame = config.max_message_chars * 4 + 1024

    def cors(request: Request, response: Response) -> Response:
        origin = request.headers.get("origin")
        if origin and origin_of(origin) in {origin_of(a) for a in allowed}:
            response.headers["Access-Control-Allow-Origin"] = origin_of(origin) or ""
            response.headers["Vary"] = "Origin"
        return response

    @router.get("/widget.js", include_in_schema=False)
    async def widget_js() -> FileResponse:
        return _static("widget.js", "text/javascript; charset=utf-8")

    @router.get("/widget.css", include_in_schema=False)
    async def widget_css() -> FileResponse:
        return _static("widget.css", "text/css; charset=utf-8")

    @router.post("/session")
    async def new_session(request: Request) -> Response:
        """A fresh visitor key and token; ``{email, hash}`` in the body verifies identity."""
        if request.headers.get("origin") and not origin_allowed(request, allowed):
            return JSONResponse({"error": "origin not allowed"}, status_code=403)
        client = request.client.host if request.client else "unknown"
        if not session_limiter.allow(client):
            return cors(request, JSONResponse({"error": "slow_down"}, status_code=429))
        body: Any = {}
        raw = await request.body()
        if raw and len(raw) <= 4096:
            try:
                body = json.loads(raw)
            except ValueError:
                body = {}
        if not isinstance(body, dict):
            body = {}
        email = body.get("email") if isinstance(body.get("email"), str) else None
        given = body.get("hash") if isinstance(body.get("hash"), str) else None
        verified = verify_identity(config.identity_secret, email, given)
        if email and verified is None:
            logger.info("webchat.identity.unverified")
        session = VisitorSession(visitor=new_visitor_key(), email=verified)
        payload = {
            "visitor": session.visitor,
            "token": tokens.issue(session),
            "verified": verified is not None,
        }
        return cors(request, JSONResponse(payload, headers={"Cache-Control": "no-store"}))

    @router.get("/history")
    async def visitor_history(request: Request, visitor: str = "", token: str = "") -> Response:
        """The visitor's own messages (never private notes); anyone else's → 404."""
        session = tokens.check(token, visitor)
        if session is None:
            return cors(request, JSONResponse({"error": "not found"}, status_code=404))
        if config.require_identity and session.email is None:
            messages: list[dict[str, Any]] = []
        else:
            messages = await history.messages(session.visitor)
        body = {"messages": messages, "verified": session.email is not None}
        return cors(request, JSONResponse(body, headers={"Cache-Control": "no-store"}))

    @router.websocket("/ws")
    async def visitor_socket(websocket: WebSocket) -> None:
        if not origin_allowed(websocket, allowed):
            logger.info("webchat.ws.refused reason=origin")
            await websocket.close(code=CLOSE_FORBIDDEN)
            return
        session = tokens.check(
            websocket.query_params.get("token"), websocket.query_params.get("visitor")
        )
        if session is None:
            logger.info("webchat.ws.refused reason=token")
            await websocket.close(code=CLOSE_UNAUTHORIZED)
            return
        await websocket.accept()
        await channel.attach(session.visitor, websocket)
        try:
            await websocket.send_json({"type": "hello", "verified": session.email is not None})
            while True:
                raw = await websocket.receive_text()
                if len(raw) > max_frame:
                    await websocket.send_json({"type": "error", "code": "too_large"})
                    await websocket.close(code=CLOSE_TOO_LARGE)
                    return
                reply = await _on_frame(raw, session)
                if reply is not None:
                    await websocket.send_text(orjson.dumps(reply).decode())
        except WebSocketDisconnect:
            pass
        finally:
            await channel.detach(session.visitor, websocket)

    async def _on_frame(raw: str, session: VisitorSession) -> dict[str, Any] | None:
        try:
            frame = orjson.loads(raw)
        except ValueError:  # orjson's JSONDecodeError is one
            return {"type": "error", "code": "bad_frame"}
        if not isinstance(frame, dict):
            return {"type": "error", "code": "bad_frame"}
        kind = frame.get("type")
        if kind == "ping":
            return {"type": "pong"}
        if kind != "message":
            return {"type": "error", "code": "bad_frame"}
        client_id = frame.get("client_id")
        if not valid_client_id(client_id):
            return {"type": "error", "code": "bad_frame"}
        text = frame.get("text")
        button = frame.get("button")
        if text is not None and not isinstance(text, str):
            return {"type": "error", "code": "bad_frame", "client_id": client_id}
        if button is not None and (not isinstance(button, str) or len(button) > 200):
            return {"type": "error", "code": "bad_frame", "client_id": client_id}
        if not (text or "").strip() and not button:
            return {"type": "error", "code": "empty", "client_id": client_id}
        if len(text or "") > config.max_message_chars:
            return {
                "type": "error",
                "code": "too_long",
                "client_id": client_id,
                "limit": config.max_message_chars,
            }
        if not message_limiter.allow(session.visitor):
            logger.info("webchat.ws.slow_down")
            return {"type": "error", "code": "slow_down", "client_id": client_id}
        inbound = inbound_from_frame(frame, session)
        try:
            await handle(inbound)
        except RejectedInput as exc:
            return {"type": "error", "code": "rejected", "client_id": client_id, "text": str(exc)}
        except Exception:
            logger.exception("webchat.inbound.failed")
            return {"type": "error", "code": "server_error", "client_id": client_id}
        return {"type": "ack", "client_id": client_id}

    return router
