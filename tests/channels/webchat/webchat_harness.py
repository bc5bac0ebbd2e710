"""Helpers for the web chat tests: a real deskbot HTTP server (port 0) over the real core
on a SQLite temp database, and small WebSocket helpers (imported by name, like the Slack
tests' fakes)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bot.main import Core, build_channels, build_core, http_routers
from channels.http.server import HttpServer, build_app
from knowledge import KnowledgeBase
from storage.db import Database
from storage.migrate import upgrade
from tests.conftest import make_settings

IDENTITY_SECRET = "identity-secret-for-tests"
FOREIGN_ORIGIN = "https://evil.example"
INTRANET_ORIGIN = "https://intranet.example"


@dataclass
class WebDesk:
    core: Core
    server: HttpServer
    http: httpx.AsyncClient

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def origin(self) -> str:
        return self.base

    async def session(self, **body: Any) -> dict[str, Any]:
        response = await self.http.post(
            "/webchat/session", content=json.dumps(body), headers={"Origin": self.origin}
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def ws_url(self, visitor: str, token: str) -> str:
        return f"ws://127.0.0.1:{self.server.port}/webchat/ws?visitor={visitor}&token={token}"

    def connect(self, visitor: str, token: str, *, origin: str | None = None) -> Any:
        headers = {"Origin": origin or self.origin}
        return connect(self.ws_url(visitor, token), additional_headers=headers, open_timeout=5)


async def next_frame(ws: ClientConnection, *, kind: str | None = None) -> dict[str, Any]:
    """The next frame (of ``kind`` when given), waiting at most 10 s."""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
        if kind is None or frame.get("type") == kind:
            return dict(frame)


async def frames_until(
    ws: ClientConnection, predicate: Any, *, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Collect frames until ``predicate(frame)`` holds for the last one."""
    seen: list[dict[str, Any]] = []

    async def _collect() -> None:
        while True:
            frame = json.loads(await ws.recv())
            seen.append(frame)
            if predicate(frame):
                return

    await asyncio.wait_for(_collect(), timeout=timeout)
    return seen


async def start_web_desk(
    tmp_path: Path,
    *,
    knowledge: KnowledgeBase | None = None,
    database: Database | None = None,
    **overrides: Any,
) -> tuple[Core, HttpServer]:
    """A real server on port 0 over SQLite in ``tmp_path``, or over ``database`` (already
    migrated); ``knowledge``: an already loaded KB, to save the load."""
    settings = make_settings(
        tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'deskbot.sqlite3'}",
        webchat_identity_secret=IDENTITY_SECRET,
        webchat_allowed_origins=[INTRANET_ORIGIN],
        **overrides,
    )
    core = build_core(settings, knowledge=knowledge, database=database)
    await upgrade(core.db)
    for channel in build_channels(core):
        core.registry.add(channel)
    app = build_app(health=core.health, routers=http_routers(core), backlog=core.backlog)
    server = HttpServer(app, host="127.0.0.1", port=0)
    await server.start()
    await core.dispatcher.start()
    return core, server


AGENT_PASSWORD = "correct horse battery staple"


@dataclass
class AgentClient:
    """A browser-like console client: cookies, the CSRF header, the page's Origin."""

    desk: WebDesk
    http: httpx.AsyncClient
    csrf: str = ""

    async def login(self, username: str, password: str = AGENT_PASSWORD) -> httpx.Response:
        page = await self.http.get("/agent")
        assert page.status_code == 200
        token = (await self.http.get("/agent/api/login-token")).json()["csrf"]
        response = await self.http.post(
            "/agent/login",
            json={"username": username, "password": password},
            headers={"Origin": self.desk.origin, "X-CSRF-Token": token},
        )
        if response.status_code == 200:
            self.csrf = (await self.http.get("/agent/api/me")).json()["csrf"]
        return response

    async def post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return await self.http.post(
            path,
            json=body or {},
            headers={"Origin": self.desk.origin, "X-CSRF-Token": self.csrf},
        )

    def cookie_header(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.http.cookies.jar)

    def connect(self, *, origin: str | None = None) -> Any:
        url = f"ws://127.0.0.1:{self.desk.server.port}/agent/ws"
        headers = {"Origin": origin or self.desk.origin, "Cookie": self.cookie_header()}
        return connect(url, additional_headers=headers, open_timeout=5)
