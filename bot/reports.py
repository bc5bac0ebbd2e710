"""Read-only views for the REST API and reports: tickets, their event log, alerts and
knowledge search.

Everything here reads; nothing changes state. Visibility follows the agent rules of
:mod:`bot.agents`: a lead, or an agent with no groups, sees every group; anyone else sees
the tickets of their own groups only, and a ticket they may not see reads as missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.catalog import Catalog
from knowledge import KnowledgeBase
from storage.db import Database
from storage.models import Agent, Alert, Ticket, TicketEvent
from storage.repositories import Agents, Alerts, Tickets

DEFAULT_GROUP = "service-desk"
TICKET_STATUSES = ("new", "open", "pending", "resolved", "closed")


@dataclass(frozen=True, slots=True)
class TicketSummary:
    number: str
    kind: str
    status: str
    title: str
    service: str | None
    agent_group: str
    priority: int
    priority_name: str
    created_at: datetime
    updated_at: datetime
    first_response_due: datetime | None
    resolution_due: datetime | None
    resolved_at: datetime | None


@dataclass(frozen=True, slots=True)
class TicketLogEntry:
    at: datetime
    actor_kind: str
    actor_id: int | None
    action: str
    public: bool
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TicketDetail:
    summary: TicketSummary
    description: str
    priority_reason: str
    impact: int | None
    urgency: int | None
    vip_uplift: bool
    conversation_id: int | None
    assignee_id: int | None
    first_response_at: datetime | None
    events: list[TicketLogEntry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AlertView:
    id: int
    kind: str
    summary: str
    conversation_id: int | None
    detail: dict[str, Any]
    at: datetime
    acknowledged_at: datetime | None


@dataclass(frozen=True, slots=True)
class KnowledgeHit:
    article_id: str
    title: str
    service: str | None
    score: float
    confidence: float
    excerpt: str


@dataclass(frozen=True, slots=True)
class KnowledgeAnswer:
    """The knowledge base's decision for a query (answer, suggest or refuse) and its ranking."""

    query: str
    decision: str
    matches: list[KnowledgeHit]


def visible_groups(agent: Agent) -> list[str] | None:
    """The agent groups whose tickets ``agent`` may see; None means every group."""
    if agent.is_lead or not agent.groups:
        return None
    return list(agent.groups)


def may_see_ticket(agent: Agent, ticket: Ticket) -> bool:
    if not agent.active:
        return False
    groups = visible_groups(agent)
    return groups is None or (ticket.agent_group or DEFAULT_GROUP) in groups


def _excerpt(body: str, limit: int = 280) -> str:
    text = " ".join(body.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


class DeskReports:
    """Read-only queries over tickets and alerts, and knowledge search, for one agent."""

    def __init__(
        self, database: Database, *, catalog: Catalog, knowledge: KnowledgeBase | None
    ) -> None:
        self.db = database
        self.catalog = catalog
        self.knowledge = knowledge

    def _summary(self, ticket: Ticket) -> TicketSummary:
        return TicketSummary(
            number=ticket.number,
            kind=ticket.kind,
            status=ticket.status,
            title=ticket.title,
            service=ticket.service,
            agent_group=ticket.agent_group or DEFAULT_GROUP,
            priority=ticket.priority,
            priority_name=self.catalog.priority_names.get(ticket.priority, ""),
            created_at=ticket.created_at,
            updated_at=ticket.updated_at,
            first_response_due=ticket.first_response_due,
            resolution_due=ticket.resolution_due,
            resolved_at=ticket.resolved_at,
        )

    async def tickets(
        self, agent: Agent, *, statuses: Sequence[str] = (), limit: int = 50
    ) -> list[TicketSummary]:
        """The newest tickets the agent may see, optionally of some statuses only."""
        if not agent.active:
            return []
        async with self.db.read() as session:
            rows = await Tickets(session).listing(
                groups=visible_groups(agent),
                default_group=DEFAULT_GROUP,
                statuses=statuses,
                limit=max(1, min(limit, 500)),
            )
        return [self._summary(t) for t in rows]

    async def ticket(self, number: str, agent: Agent) -> TicketDetail | None:
        """One ticket with its whole event log, or None when missing or not the agent's."""
        async with self.db.read() as session:
            repo = Tickets(session)
            ticket = await repo.by_number(number)
            if ticket is None or not may_see_ticket(agent, ticket):
                return None
            events: list[TicketEvent] = await repo.events(ticket.id)
        return TicketDetail(
            summary=self._summary(ticket),
            description=ticket.description,
            priority_reason=ticket.priority_reason,
            impact=ticket.impact,
            urgency=ticket.urgency,
            vip_uplift=bool(ticket.vip_uplift),
            conversation_id=ticket.conversation_id,
            assignee_id=ticket.assignee_id,
            first_response_at=ticket.first_response_at,
            events=[
                TicketLogEntry(
                    at=e.at,
                    actor_kind=e.actor_kind,
                    actor_id=e.actor_id,
                    action=e.action,
                    public=bool(e.public),
                    detail=dict(e.detail or {}),
                )
                for e in events
            ],
        )

    async def alerts(self, *, kind: str | None = None, limit: int = 50) -> list[AlertView]:
        """The newest alerts (abuse, mail loops, failed deliveries); leads only, by the caller."""
        async with self.db.read() as session:
            rows: list[Alert] = await Alerts(session).recent(kind=kind, limit=limit)
        return [
            AlertView(
                id=a.id,
                kind=a.kind,
                summary=a.summary,
                conversation_id=a.conversation_id,
                detail=dict(a.detail or {}),
                at=a.at,
                acknowledged_at=a.acknowledged_at,
            )
            for a in rows
        ]

    def search_knowledge(self, query: str, *, limit: int = 5) -> KnowledgeAnswer | None:
        """The knowledge base's ranked matches and decision; None when no KB is loaded."""
        if self.knowledge is None:
            return None
        result = self.knowledge.search(query, limit=limit)
        return KnowledgeAnswer(
            query=query,
            decision=result.decision,
            matches=[
                KnowledgeHit(
                    article_id=m.article.id,
                    title=m.article.title,
                    service=m.article.service,
                    score=float(m.score),
                    confidence=float(m.confidence),
                    excerpt=_excerpt(m.article.body),
                )
                for m in result.matches
            ],
        )


async def count_agents(database: Database) -> int:
    """How many agent accounts exist (``deskbot run`` creates a demo agent when none do)."""
    async with database.read() as session:
        return await Agents(session).count()
