"""Slack's part of the composition root: the channel and the triage surface, bound to
the core's services.

``bot.main.build_channels`` calls :func:`build_slack` when Slack is enabled. The
database reads the channel needs come from ``bot.lookups`` (a channel imports nothing
of ``storage``), bound here to the core's database, clock and catalog.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bot import lookups
from bot.types import Inbound, Outbound
from channels.slack.adapter import CardRecord, SlackChannel, SlackConfig, SlackCoreAccess
from channels.slack.convert import HomeTicket
from channels.slack.surface import CARD_NOTE, CardFacts, SlackTriageSurface

if TYPE_CHECKING:
    from bot.main import Core


def build_slack(core: Core) -> tuple[SlackChannel, SlackTriageSurface | None]:
    """The Slack channel, and its triage surface when a triage channel is configured."""
    settings = core.settings
    db, catalog = core.db, core.catalog

    async def platform_id_of(outbox_id: int) -> str | None:
        return await lookups.platform_id_of(db, outbox_id)

    async def card_of(conversation_id: int) -> CardRecord | None:
        post = await lookups.card_of(db, conversation_id, CARD_NOTE)
        if post is None:
            return None
        return CardRecord(
            outbox_id=post.outbox_id,
            channel=post.address.get("channel"),
            ts=post.platform_id,
            card=post.meta.get("card") or {},
        )

    async def open_tickets_of(slack_user: str) -> list[HomeTicket]:
        found = await lookups.open_tickets_of(db, "slack", slack_user)
        return [HomeTicket(t.number, t.title, t.status, f"P{t.priority}") for t in found]

    async def accept_many(inbounds: Sequence[Inbound]) -> list[bool]:
        return await lookups.accept_many(core.inbox, inbounds)

    async def card_facts(session: Any, conversation: Any) -> CardFacts:
        facts = await lookups.card_facts(session, conversation, catalog)
        return CardFacts(facts.ticket_number, facts.priority, facts.priority_reason, facts.summary)

    async def enqueue(session: Any, outbound: Outbound) -> int:
        return await lookups.enqueue_outbound(session, outbound, core.clock.now())

    channel = SlackChannel(
        SlackConfig(
            bot_token=_secret(settings.slack_bot_token) or "",
            app_token=_secret(settings.slack_app_token),
            signing_secret=_secret(settings.slack_signing_secret),
            api_url=settings.slack_api_url,
            triage_channel=settings.slack_triage_channel,
            agent_usergroup=settings.slack_agent_usergroup,
            agent_users=tuple(settings.slack_agent_users),
        ),
        SlackCoreAccess(
            accept=core.inbox.accept,
            accept_many=accept_many,
            agents=core.agents,
            subscribe=core.events.subscribe,
            platform_id_of=platform_id_of,
            card_of=card_of,
            open_tickets_of=open_tickets_of,
            services=[(s.id, s.name) for s in catalog.services.values()],
        ),
    )
    surface = (
        SlackTriageSurface(settings.slack_triage_channel, card_facts=card_facts, enqueue=enqueue)
        if settings.slack_triage_channel
        else None
    )
    return channel, surface


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None
