"""Small database reads and writes that channel glue needs, returning plain values.

Channels import nothing of ``storage``; the composition root (``channels.slack.wiring``
for Slack) binds these functions to the core's database and catalog and hands the
bound callables to the channel. Each read opens its own short read session; the two
functions that take a ``session`` run inside the caller's transaction (the manager's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.catalog import Catalog
from bot.inbox import Inbox
from bot.tickets import OPEN_STATUSES
from bot.types import Inbound, Outbound, inbound_to_json
from storage.db import Database
from storage.repositories import Conversations, Outbox, People, Tickets
from storage.repositories import Inbox as InboxRepository


@dataclass(frozen=True, slots=True)
class OutboxPost:
    """An outbox row as a channel sees it: where it went, and its platform id once sent."""

    outbox_id: int
    address: Mapping[str, Any]
    meta: Mapping[str, Any]
    platform_id: str | None


@dataclass(frozen=True, slots=True)
class OpenTicket:
    number: str
    title: str
    status: str
    priority: int


@dataclass(frozen=True, slots=True)
class ConversationFacts:
    """What an escalation card shows besides the person: the ticket, or what was said."""

    ticket_number: str | None
    priority: str
    priority_reason: str
    summary: str


async def platform_id_of(db: Database, outbox_id: int) -> str | None:
    """The platform's id of a sent outbox row (a Slack ``ts``); None until it is sent."""
    async with db.read() as session:
        row = await Outbox(session).get(outbox_id)
    return row.platform_id if row is not None and row.status == "sent" else None


async def card_of(db: Database, conversation_id: int, note_key: str) -> OutboxPost | None:
    """The outbox row whose id the conversation noted under ``note_key`` (its card)."""
    async with db.read() as session:
        conversation = await Conversations(session).get(conversation_id)
        ref = (conversation.notes or {}).get(note_key) if conversation is not None else None
        row = await Outbox(session).get(int(ref)) if ref else None
    if row is None:
        return None
    return OutboxPost(
        outbox_id=row.id,
        address=dict(row.payload.get("address") or {}),
        meta=dict(row.payload.get("meta") or {}),
        platform_id=row.platform_id if row.status == "sent" else None,
    )


async def open_tickets_of(db: Database, channel: str, external_id: str) -> list[OpenTicket]:
    """Open tickets of the person behind a channel identity (newest first, at most 50)."""
    async with db.read() as session:
        identity = await People(session).identity(channel, external_id)
        if identity is None:
            return []
        found = await Tickets(session).of_requester(
            identity.person_id, statuses=OPEN_STATUSES, limit=50
        )
    return [OpenTicket(t.number, t.title, t.status, t.priority) for t in found]


async def card_facts(session: Any, conversation: Any, catalog: Catalog) -> ConversationFacts:
    """Inside the caller's transaction: the ticket's facts, else the person's last words."""
    ticket = await Tickets(session).get(conversation.ticket_id) if conversation.ticket_id else None
    if ticket is not None:
        name = catalog.priority_names.get(ticket.priority, "")
        return ConversationFacts(
            ticket.number,
            f"P{ticket.priority} {name}".strip(),
            ticket.priority_reason,
            ticket.title,
        )
    said = [
        m.text
        for m in await Conversations(session).messages(conversation.id)
        if m.direction == "in" and m.text.strip()
    ]
    return ConversationFacts(None, "no ticket", "", said[-1] if said else "")


async def enqueue_outbound(session: Any, outbound: Outbound, now: datetime) -> int:
    """Inside the caller's transaction: one outbox row for ``outbound``; its id."""
    row = await Outbox(session).enqueue(
        channel=outbound.channel,
        payload=outbound.to_json(),
        now=now,
        conversation_id=outbound.conversation_id,
    )
    return int(row.id)


async def accept_many(inbox: Inbox, inbounds: Sequence[Inbound]) -> list[bool]:
    """:meth:`bot.inbox.Inbox.accept` for several messages in one transaction (group
    commit: a burst of events costs one commit, not one each). ``True`` for each new one.
    """
    if not inbounds:
        return []
    now = inbox.clock.now()
    async with inbox.db.transaction() as session:
        repository = InboxRepository(session)
        fresh = [
            await repository.accept(
                channel=inbound.channel,
                external_id=inbound.external_id,
                payload=inbound_to_json(inbound),
                now=now,
            )
            for inbound in inbounds
        ]
    inbox.wakeup.set()
    return fresh
