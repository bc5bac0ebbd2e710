"""The agent console: login, queue, context card, claim, reply, note, hand back, resolve,
and live updates over ``WS /agent/ws`` driven by the core's event bus (every node's events
when several share one PostgreSQL; a ``resync`` frame when some may have been missed).

Sessions are the signed cookie of :mod:`channels.webchat.sessions` (shared with the REST
API): a password change or a deactivation ends every session at the next request and every
open socket within ``recheck_seconds``. Every POST needs the CSRF token (a header, compared
with the one in the signed cookie) and a same-origin ``Origin``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from bot.agents import AgentActionRefused, AgentDesk
from bot.events import RESYNC, EventBus
from channels.webchat.channel import PEER_OUTBOUND
from channels.webchat.guards import RateLimiter
from channels.webchat.pages import SECURITY_HEADERS, html_page
from channels.webchat.sessions import (
    CSRF_HEADER,
    SESSION_COOKIE,
    SESSION_COOKIE_PATH,
    AgentSession,
    AgentSessions,
    Refusal,
)

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
LOGIN_COOKIE = "deskbot_login"
MAX_REPLY_CHARS = 8000


def _json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


MAX_CHANGED_IDS = 100
"""More conversations changed than this in one window: the frame says ``all``."""


def console_router(
    *,
    agents: AgentDesk,
    events: EventBus,
    secret_key: str,
    sessions: AgentSessions | None = None,
    secure_cookies: bool = False,
    recheck_seconds: float = 2.0,
    coalesce_seconds: float = 0.25,
    public_origins: tuple[str, ...] = (),
) -> APIRouter:
    """The console's pages, JSON API and live socket."""
    router = APIRouter(prefix="/agent", tags=["agent console"])
    if sessions is None:
        sessions = AgentSessions(
            agents, secret_key, secure_cookies=secure_cookies, public_origins=public_origins
        )
    logins = URLSafeTimedSerializer(secret_key, salt="deskbot.agent.login")
    login_limiter = RateLimiter(10, burst=5)
    current = sessions.current

    def cookie_args() -> dict[str, Any]:
        return {
            "httponly": True,
            "samesite": "strict",
            "secure": sessions.secure_cookies,
            "path": "/agent",
        }

    def refused(status: int, message: str) -> JSONResponse:
        return JSONResponse(
            {"error": message}, status_code=status, headers={"Cache-Control": "no-store"}
        )

    same_origin = sessions.same_origin

    async def guarded(request: Request) -> AgentSession | JSONResponse:
        """A POST's agent session, after the Origin and CSRF checks."""
        checked = await sessions.for_write(request)
        if isinstance(checked, Refusal):
            return refused(checked.status, checked.message)
        return checked

    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw or len(raw) > 64 * 1024:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    # pages and static files ----------------------------------------------------------

    @router.get("", include_in_schema=False)
    async def console_page() -> Response:
        response = html_page(STATIC_DIR / "console.html")
        response.set_cookie(LOGIN_COOKIE, logins.dumps(secrets.token_urlsafe(24)), **cookie_args())
        return response

    @router.get("/static/{name}", include_in_schema=False)
    async def console_static(name: str) -> Response:
        types = {
            "console.js": "text/javascript; charset=utf-8",
            "console.css": "text/css; charset=utf-8",
        }
        if name not in types:
            return refused(404, "not found")
        return FileResponse(
            STATIC_DIR / name,
            media_type=types[name],
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
        )

    # login ------------------------------------------------------------------------------

    @router.get("/api/login-token")
    async def login_token(request: Request) -> Response:
        """The CSRF token the login form sends back (double submit, signed)."""
        raw = request.cookies.get(LOGIN_COOKIE)
        token: object = None
        if raw:
            try:
                token = logins.loads(raw, max_age=3600)
            except BadSignature:
                token = None
        fresh = not isinstance(token, str)
        csrf = secrets.token_urlsafe(24) if fresh else str(token)
        response = JSONResponse({"csrf": csrf}, headers={"Cache-Control": "no-store"})
        if fresh:
            response.set_cookie(LOGIN_COOKIE, logins.dumps(csrf), **cookie_args())
        return response

    @router.post("/login")
    async def login(request: Request) -> Response:
        if not same_origin(request):
            return refused(403, "cross-origin request refused")
        raw = request.cookies.get(LOGIN_COOKIE)
        try:
            expected = logins.loads(raw or "", max_age=3600)
        except BadSignature:
            expected = None
        given = request.headers.get(CSRF_HEADER, "")
        if not isinstance(expected, str) or not hmac.compare_digest(
            given.encode(), expected.encode()
        ):
            return refused(403, "missing or wrong CSRF token")
        client = request.client.host if request.client else "unknown"
        if not login_limiter.allow(client):
            return refused(429, "too many attempts, wait a minute")
        body = await body_of(request)
        username = str(body.get("username") or "")[:100]
        password = str(body.get("password") or "")[:1000]
        agent = await agents.authenticate(username, password) if username and password else None
        if agent is None:
            logger.info("console.login.failed")
            return refused(401, "wrong username or password")
        csrf = secrets.token_urlsafe(24)
        response = JSONResponse({"ok": True, "csrf": csrf}, headers={"Cache-Control": "no-store"})
        response.set_cookie(SESSION_COOKIE, sessions.issue(agent, csrf), **sessions.cookie_args())
        response.delete_cookie(LOGIN_COOKIE, path="/agent")
        logger.info("console.login agent=%s", agent.id)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        session = await guarded(request)
        if isinstance(session, JSONResponse):
            return session
        response = JSONResponse({"ok": True})
        response.delete_cookie(SESSION_COOKIE, path=SESSION_COOKIE_PATH)
        return response

    # the API the console page uses ----------------------------------------------------------

    @router.get("/api/me")
    async def me(request: Request) -> Response:
        session = await current(request)
        if session is None:
            return refused(401, "not logged in")
        agent = session.agent
        return JSONResponse(
            {
                "agent": {
                    "id": agent.id,
                    "username": agent.username,
                    "name": agent.display_name,
                    "groups": list(agent.groups or []),
                    "lead": bool(agent.is_lead),
                },
                "csrf": session.csrf,
            },
            headers={"Cache-Control": "no-store"},
        )

    @router.get("/api/queue")
    async def queue(request: Request) -> Response:
        session = await current(request)
        if session is None:
            return refused(401, "not logged in")
        rows = await agents.queue(session.agent)
        items = [
            {
                "id": c.id,
                "channel": c.channel,
                "state": c.state,
                "agent_id": c.agent_id,
                "mine": c.agent_id == session.agent.id,
                "group": c.agent_group,
                "reason": (c.notes or {}).get("escalation_reason"),
                "flagged": c.flagged,
                "updated_at": c.updated_at.isoformat(),
            }
            for c in rows
        ]
        return JSONResponse({"queue": items}, headers={"Cache-Control": "no-store"})

    @router.get("/api/conversations/{conversation_id}")
    async def context(request: Request, conversation_id: int) -> Response:
        session = await current(request)
        if session is None:
            return refused(401, "not logged in")
        try:
            card = await agents.context(conversation_id, session.agent)
        except AgentActionRefused:
            return refused(404, "not found")
        return JSONResponse(_json(asdict(card)), headers={"Cache-Control": "no-store"})

    Action = Callable[[AgentSession, int, dict[str, Any]], Awaitable[dict[str, Any]]]

    def action(path: str, run: Action) -> None:
        async def endpoint(request: Request, conversation_id: int) -> Response:
            session = await guarded(request)
            if isinstance(session, JSONResponse):
                return session
            body = await body_of(request)
            try:
                result = await run(session, conversation_id, body)
            except AgentActionRefused as exc:
                status = 404 if str(exc) == "not found" else 409
                return refused(status, str(exc))
            return JSONResponse({"ok": True, **result})

        endpoint.__name__ = f"console_{path.replace('-', '_')}"
        router.add_api_route(
            f"/api/conversations/{{conversation_id}}/{path}", endpoint, methods=["POST"]
        )

    async def do_claim(session: AgentSession, cid: int, body: dict[str, Any]) -> dict[str, Any]:
        won = await agents.claim(cid, session.agent)
        if not won:
            raise AgentActionRefused("someone else claimed it first")
        return {}

    def text_of(body: dict[str, Any]) -> str:
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise AgentActionRefused("empty message")
        if len(text) > MAX_REPLY_CHARS:
            raise AgentActionRefused(f"message longer than {MAX_REPLY_CHARS} characters")
        return text

    async def do_reply(session: AgentSession, cid: int, body: dict[str, Any]) -> dict[str, Any]:
        message_id = await agents.reply(cid, session.agent, text_of(body))
        return {"message_id": message_id}

    async def do_note(session: AgentSession, cid: int, body: dict[str, Any]) -> dict[str, Any]:
        message_id = await agents.reply(cid, session.agent, text_of(body), private=True)
        return {"message_id": message_id}

    async def do_hand_back(session: AgentSession, cid: int, body: dict[str, Any]) -> dict[str, Any]:
        await agents.hand_back(cid, session.agent)
        return {}

    async def do_resolve(session: AgentSession, cid: int, body: dict[str, Any]) -> dict[str, Any]:
        note = body.get("note")
        await agents.resolve(cid, session.agent, note=note if isinstance(note, str) else None)
        return {}

    action("claim", do_claim)
    action("reply", do_reply)
    action("note", do_note)
    action("hand-back", do_hand_back)
    action("resolve", do_resolve)

    # live updates ----------------------------------------------------------------------------

    @router.websocket("/ws")
    async def live(websocket: WebSocket) -> None:
        if not same_origin(websocket):
            await websocket.close(code=4403)
            return
        session = await current(websocket)
        if session is None:
            await websocket.close(code=4401)
            return
        await websocket.accept()
        # every node's events: the console shows the whole desk, whichever node the
        # message arrived on or the claim was made on
        async with events.subscribe(cluster=True) as inbox:
            async with asyncio.TaskGroup() as group:
                pump = group.create_task(_pump(websocket, inbox, session))
                group.create_task(_until_disconnect(websocket, pump))

    async def _until_disconnect(websocket: WebSocket, pump: asyncio.Task[None]) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
        pump.cancel()

    async def _pump(websocket: WebSocket, inbox: asyncio.Queue[Any], session: AgentSession) -> None:
        """Tell the agent's page what changed, a frame per ``coalesce_seconds`` at most.

        A busy desk publishes thousands of events a second (every bot message is one);
        the page only needs to know which conversations changed, to reload its queue and
        the conversation it shows. So the events of a short window travel as one
        ``changed`` frame naming their conversations (``all`` when there are many), and
        the session is re-checked every ``recheck_seconds``, not on every event."""
        loop = asyncio.get_running_loop()
        try:
            await websocket.send_json({"type": "hello", "agent": session.agent.id})
            checked = loop.time()
            while True:
                try:
                    first = await asyncio.wait_for(inbox.get(), timeout=recheck_seconds)
                except TimeoutError:
                    first = None
                if first is None or loop.time() - checked >= recheck_seconds:
                    checked = loop.time()
                    if await current(websocket) is None:
                        logger.info("console.ws.session_ended agent=%s", session.agent.id)
                        await websocket.send_json({"type": "session_ended"})
                        await websocket.close(code=4401)
                        return
                if first is None:
                    continue
                await asyncio.sleep(coalesce_seconds)  # let the window's events gather
                events = [first]
                while not inbox.empty():
                    events.append(inbox.get_nowait())
                if any(event.kind == RESYNC for event in events):
                    # events from other nodes may have been missed: reload everything
                    await websocket.send_json({"type": "resync"})
                    continue
                changed: dict[int | None, None] = {}
                for event in events:
                    if event.kind == PEER_OUTBOUND:
                        continue
                    if event.kind == "alert" and not session.agent.is_lead:
                        continue
                    changed[event.conversation_id] = None
                if not changed:
                    continue
                ids = [cid for cid in changed if cid is not None]
                frame: dict[str, Any] = {"type": "changed"}
                if len(ids) > MAX_CHANGED_IDS or None in changed:
                    frame["all"] = True
                else:
                    frame["conversations"] = ids
                await websocket.send_json(frame)
        except (WebSocketDisconnect, RuntimeError):
            return

    return router


__all__ = ["SECURITY_HEADERS", "console_router"]
