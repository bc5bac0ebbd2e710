"""Agent sessions: the signed cookie shared by the console (``/agent``) and the REST API
(``/api``).

The cookie names the agent and the time their credentials last changed, so a password
change or a deactivation ends every session at the next request. It is ``HttpOnly``,
``SameSite=Strict`` and scoped to ``/`` so that both the console and ``/api`` receive it.
A write also needs the CSRF token (a header, compared with the one in the signed cookie)
and a same-origin ``Origin``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import HTTPConnection

from bot.agents import Agent, AgentDesk
from channels.webchat.guards import origin_allowed

SESSION_COOKIE = "deskbot_agent"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600
SESSION_COOKIE_PATH = "/"


@dataclass(frozen=True, slots=True)
class AgentSession:
    agent: Agent
    csrf: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused, as the HTTP status and a message safe to show."""

    status: int
    message: str


def _stamp(agent: Agent) -> str:
    return agent.credentials_changed_at.isoformat()


class AgentSessions:
    """Issues and checks agent session cookies; one instance per HTTP server."""

    def __init__(
        self,
        agents: AgentDesk,
        secret_key: str,
        *,
        secure_cookies: bool = False,
        public_origins: tuple[str, ...] = (),
    ) -> None:
        self.agents = agents
        self.secure_cookies = secure_cookies
        self.public_origins = public_origins
        self._serializer = URLSafeTimedSerializer(secret_key, salt="deskbot.agent.session")

    def issue(self, agent: Agent, csrf: str) -> str:
        return self._serializer.dumps({"a": agent.id, "c": _stamp(agent), "x": csrf})

    def cookie_args(self) -> dict[str, Any]:
        return {
            "httponly": True,
            "samesite": "strict",
            "secure": self.secure_cookies,
            "path": SESSION_COOKIE_PATH,
            "max_age": SESSION_SECONDS,
        }

    async def from_cookie(self, raw: str | None) -> AgentSession | None:
        """The live session a cookie value names, or None (bad, expired, or revoked)."""
        if not raw:
            return None
        try:
            data = self._serializer.loads(raw, max_age=SESSION_SECONDS)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("a"), int):
            return None
        if not 0 < data["a"] < 2**63:
            return None
        agent = await self.agents.get_agent(data["a"])
        if agent is None or not agent.active or _stamp(agent) != data.get("c"):
            return None
        return AgentSession(agent=agent, csrf=str(data.get("x", "")))

    async def current(self, connection: HTTPConnection) -> AgentSession | None:
        return await self.from_cookie(connection.cookies.get(SESSION_COOKIE))

    def same_origin(self, connection: HTTPConnection) -> bool:
        # the server's own origin, or its public URL when a TLS proxy sits in front
        return origin_allowed(connection, self.public_origins)

    async def for_write(self, connection: HTTPConnection) -> AgentSession | Refusal:
        """A write's session, after the Origin and CSRF checks."""
        if not self.same_origin(connection):
            return Refusal(403, "cross-origin request refused")
        session = await self.current(connection)
        if session is None:
            return Refusal(401, "not logged in")
        given = connection.headers.get(CSRF_HEADER, "")
        if not session.csrf or not hmac.compare_digest(given.encode(), session.csrf.encode()):
            return Refusal(403, "missing or wrong CSRF token")
        return session
