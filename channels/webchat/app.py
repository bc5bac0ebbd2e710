"""Everything the web chat contributes to the HTTP server, built from the settings."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter

from bot.agents import AgentDesk
from bot.events import EventBus
from bot.history import ConversationReader
from bot.reports import DeskReports
from bot.settings import Settings
from channels.base import HandleResult, Inbound
from channels.webchat.api import api_router
from channels.webchat.channel import WebChatChannel
from channels.webchat.console import console_router
from channels.webchat.demo import demo_router
from channels.webchat.history import VisitorHistory
from channels.webchat.router import WebChatConfig, webchat_router
from channels.webchat.sessions import AgentSessions


def web_routers(
    *,
    settings: Settings,
    channel: WebChatChannel,
    handle: Callable[[Inbound], Awaitable[HandleResult]],
    agents: AgentDesk,
    events: EventBus,
    reader: ConversationReader,
    reports: DeskReports | None = None,
) -> list[Any]:
    """The widget's router, the agent console, the demo page and (with ``reports``) the
    REST API under ``/api``, which shares the console's sessions."""
    secret = settings.ensure_secret_key()
    public = (settings.public_url,) if settings.public_url else ()
    identity = settings.webchat_identity_secret
    config = WebChatConfig(
        secret_key=secret,
        identity_secret=identity.get_secret_value() if identity is not None else None,
        require_identity=settings.webchat_require_identity,
        allowed_origins=(*settings.webchat_allowed_origins, *public),
        rate_per_minute=settings.webchat_rate_per_minute,
        max_message_chars=settings.webchat_max_message_chars,
    )
    sessions = AgentSessions(
        agents,
        secret,
        secure_cookies=(settings.public_url or "").startswith("https://"),
        public_origins=public,
    )
    routers: list[APIRouter] = [
        webchat_router(
            config=config, channel=channel, handle=handle, history=VisitorHistory(reader)
        ),
        console_router(
            agents=agents,
            events=events,
            secret_key=secret,
            sessions=sessions,
        ),
        demo_router(),
    ]
    if reports is not None:
        routers.append(api_router(sessions=sessions, agents=agents, reports=reports))
    return routers
