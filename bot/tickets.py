"""Tickets: opening with an explained priority, status, closing, reopening, linking.

Every change writes an event (who, what, public or internal) in the same transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from bot.catalog import Catalog, Service
from storage.models import Conversation, Person, Ticket
from storage.repositories import Tickets

logger = logging.getLogger(__name__)

OPEN_STATUSES = ("new", "open", "pending")
STATUS_WORDS = {
    "new": "new, waiting for an agent",
    "open": "open, an agent is working on it",
    "pending": "waiting for your answer",
    "resolved": "resolved",
    "closed": "closed",
}


@dataclass(frozen=True, slots=True)
class NewTicket:
    kind: str  # incident | request | problem
    title: str
    description: str
    service: Service | None = None
    impact: int = 3
    urgency: int = 3
    fields: dict[str, object] | None = None


class TicketDesk:
    """Opens and changes tickets; the caller owns the transaction."""

    def __init__(self, catalog: Catalog, *, reopen_grace: timedelta) -> None:
        self.catalog = catalog
        self.reopen_grace = reopen_grace

    async def open(
        self,
        session: AsyncSession,
        new: NewTicket,
        *,
        requester: Person,
        conversation: Conversation | None,
        now: datetime,
        actor_kind: str = "bot",
        reopened_from: Ticket | None = None,
        flush: bool = True,
    ) -> Ticket:
        """Open a ticket with its number, priority and reason, and log it.

        With ``flush=False`` (a turn of the conversation manager's round) the ticket, its
        event and the conversation's link to it are written at the session's next flush,
        with the round's other tickets: the ticket has its number and priority at once,
        its id after that flush.
        """
        repo = Tickets(session)
        vip = bool(requester.is_vip) or self.catalog.is_vip(requester.email)
        decision = self.catalog.priority(
            impact=new.impact, urgency=new.urgency, service=new.service, vip=vip
        )
        ticket = Ticket(
            number=await repo.next_number(new.kind),
            kind=new.kind,
            status="new",
            title=new.title[:300],
            description=new.description,
            service=new.service.id if new.service else None,
            agent_group=(new.service.agent_group if new.service else None) or "service-desk",
            impact=new.impact,
            urgency=new.urgency,
            priority=decision.priority,
            priority_reason=decision.reason,
            vip_uplift=decision.vip_uplift,
            requester_id=requester.id,
            conversation_id=conversation.id if conversation else None,
            reopened_from_id=reopened_from.id if reopened_from else None,
            fields=dict(new.fields or {}),
            sla_policy=new.service.sla_policy if new.service else None,
            paused_seconds=0,
            known_error=False,
            created_at=now,
            updated_at=now,
        )
        await repo.add(ticket, flush=False)
        await repo.log(
            ticket,
            action="opened",
            actor_kind=actor_kind,
            now=now,
            detail={
                "priority": ticket.priority,
                "reason": decision.reason,
                "vip_uplift": decision.vip_uplift,
                "reopened_from": reopened_from.number if reopened_from else None,
            },
            flush=False,
        )
        if conversation is not None:
            conversation.ticket = ticket  # ticket_id follows at the flush
            conversation.agent_group = ticket.agent_group
        if flush:
            await session.flush()
        logger.info("ticket.opened number=%s priority=%s", ticket.number, ticket.priority)
        return ticket

    async def set_status(
        self,
        session: AsyncSession,
        ticket: Ticket,
        status: str,
        *,
        now: datetime,
        actor_kind: str,
        actor_id: int | None = None,
        note: str | None = None,
        public: bool = True,
    ) -> None:
        previous = ticket.status
        if previous == status:
            return
        ticket.status = status
        ticket.updated_at = now
        if status == "pending" and ticket.paused_at is None:
            ticket.paused_at = now
        elif previous == "pending" and ticket.paused_at is not None:
            ticket.paused_seconds += int((now - ticket.paused_at).total_seconds())
            ticket.paused_at = None
        if status == "resolved":
            ticket.resolved_at = now
        elif status == "closed":
            ticket.closed_at = now
        elif status in OPEN_STATUSES:
            ticket.resolved_at = None
            ticket.closed_at = None
        await Tickets(session).log(
            ticket,
            action=f"status:{status}",
            actor_kind=actor_kind,
            actor_id=actor_id,
            now=now,
            public=public,
            detail={"from": previous, "to": status, **({"note": note} if note else {})},
        )

    def within_grace(self, ticket: Ticket, now: datetime) -> bool:
        resolved = ticket.resolved_at or ticket.closed_at
        return resolved is not None and now - resolved <= self.reopen_grace

    async def link_to_problem(
        self,
        session: AsyncSession,
        incident: Ticket,
        problem: Ticket,
        *,
        now: datetime,
        actor_id: int | None,
    ) -> None:
        if problem.kind != "problem":
            raise ValueError(f"{problem.number} is not a problem ticket")
        incident.problem_id = problem.id
        incident.updated_at = now
        await Tickets(session).log(
            incident,
            action="linked_to_problem",
            actor_kind="agent",
            actor_id=actor_id,
            now=now,
            public=False,
            detail={"problem": problem.number, "known_error": problem.known_error},
        )


def describe(ticket: Ticket, catalog: Catalog) -> str:
    """One line a requester understands: number, title, status, priority."""
    name = catalog.priority_names.get(ticket.priority, f"P{ticket.priority}")
    status = STATUS_WORDS.get(ticket.status, ticket.status)
    return f"**{ticket.number}** — {ticket.title} ({status}; priority P{ticket.priority} {name})"
