"""The REST API under ``/api``: tickets, conversation context cards, knowledge search,
alerts. Documented by the OpenAPI document at ``/api/openapi.json``.

Authentication is the agent console's session cookie (log in at ``/agent``): the API acts
as that agent and sees what the agent may see. Every endpoint here reads; a write would go
through :meth:`AgentSessions.for_write` (same-origin ``Origin`` and the ``X-CSRF-Token``
header), exactly like the console's POSTs. Without a live session every endpoint answers
401; a ticket or conversation the agent may not see answers 404, the same as one that does
not exist (R34).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.security import APIKeyCookie
from pydantic import BaseModel, ConfigDict

from bot.agents import Agent, AgentActionRefused, AgentDesk, ConversationContext
from bot.reports import DeskReports, TicketDetail, TicketSummary
from channels.webchat.sessions import SESSION_COOKIE, AgentSessions

MAX_ID = 2**63 - 1

TicketStatus = Literal["new", "open", "pending", "resolved", "closed"]
Decision = Literal["answer", "suggest", "refuse"]


class ApiModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorBody(ApiModel):
    detail: str


class TicketOut(ApiModel):
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


class TicketList(ApiModel):
    tickets: list[TicketOut]


class TicketEventOut(ApiModel):
    at: datetime
    actor_kind: str
    actor_id: int | None
    action: str
    public: bool
    detail: dict[str, Any]


class TicketDetailOut(TicketOut):
    description: str
    priority_reason: str
    impact: int | None
    urgency: int | None
    vip_uplift: bool
    conversation_id: int | None
    assignee_id: int | None
    first_response_at: datetime | None
    events: list[TicketEventOut]


class PersonOut(ApiModel):
    id: int
    name: str | None
    email: str | None
    department: str | None
    vip: bool


class TicketRefOut(ApiModel):
    number: str
    title: str
    status: str
    priority: int
    priority_reason: str


class MessageOut(ApiModel):
    id: int
    direction: str
    author_kind: str
    text: str
    private: bool
    channel: str
    kind: str
    at: datetime


class TriedOut(ApiModel):
    offered_articles: list[str]
    rejected_articles: list[str]
    frustration: str | None


class ConversationCard(ApiModel):
    """The context card: who, the tickets, what the bot tried, and the transcript."""

    conversation_id: int
    channel: str
    state: str
    agent_id: int | None
    agent_group: str | None
    person: PersonOut
    ticket: TicketRefOut | None
    recent_tickets: list[TicketRefOut]
    transcript: list[MessageOut]
    tried: TriedOut
    escalation_reason: str | None
    flagged: str | None


class KnowledgeHitOut(ApiModel):
    article_id: str
    title: str
    service: str | None
    score: float
    confidence: float
    excerpt: str


class KnowledgeSearchOut(ApiModel):
    query: str
    decision: Decision
    matches: list[KnowledgeHitOut]


class AlertOut(ApiModel):
    id: int
    kind: str
    summary: str
    conversation_id: int | None
    detail: dict[str, Any]
    at: datetime
    acknowledged_at: datetime | None


class AlertList(ApiModel):
    alerts: list[AlertOut]


def _ticket_out(summary: TicketSummary) -> TicketOut:
    return TicketOut.model_validate(summary)


def _ticket_detail_out(detail: TicketDetail) -> TicketDetailOut:
    base = TicketOut.model_validate(detail.summary).model_dump()
    return TicketDetailOut(
        **base,
        description=detail.description,
        priority_reason=detail.priority_reason,
        impact=detail.impact,
        urgency=detail.urgency,
        vip_uplift=detail.vip_uplift,
        conversation_id=detail.conversation_id,
        assignee_id=detail.assignee_id,
        first_response_at=detail.first_response_at,
        events=[TicketEventOut.model_validate(e) for e in detail.events],
    )


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list | tuple) else []


def _card(context: ConversationContext) -> ConversationCard:
    tried = context.tried or {}
    frustration = tried.get("frustration")
    return ConversationCard(
        conversation_id=context.conversation_id,
        channel=context.channel,
        state=context.state,
        agent_id=context.agent_id,
        agent_group=context.agent_group,
        person=PersonOut.model_validate(context.person),
        ticket=TicketRefOut.model_validate(context.ticket) if context.ticket else None,
        recent_tickets=[TicketRefOut.model_validate(t) for t in context.recent_tickets],
        transcript=[MessageOut.model_validate(m) for m in context.transcript],
        tried=TriedOut(
            offered_articles=_strings(tried.get("offered_articles")),
            rejected_articles=_strings(tried.get("rejected_articles")),
            frustration=str(frustration) if frustration is not None else None,
        ),
        escalation_reason=context.escalation_reason,
        flagged=context.flagged,
    )


UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No live agent session (log in at /agent)"}
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Missing, or not visible to this agent"}
}


def api_router(*, sessions: AgentSessions, agents: AgentDesk, reports: DeskReports) -> APIRouter:
    """The ``/api`` endpoints, authenticated by the agent console's session cookie."""
    router = APIRouter(prefix="/api", tags=["api"], responses=UNAUTHORIZED)
    # declares the cookie in the OpenAPI document; the value is checked below
    session_cookie = APIKeyCookie(
        name=SESSION_COOKIE,
        auto_error=False,
        scheme_name="agentSession",
        description="The agent console's session cookie, set by POST /agent/login.",
    )

    # Dependencies are given as defaults, not in ``Annotated``: with postponed annotations
    # FastAPI resolves annotation strings in the module's globals, where these closures
    # do not live.
    async def agent_of(cookie: str | None = Depends(session_cookie)) -> Agent:
        session = await sessions.from_cookie(cookie)
        if session is None:
            raise HTTPException(
                status_code=401, detail="not logged in", headers={"Cache-Control": "no-store"}
            )
        return session.agent

    @router.get("/tickets", response_model=TicketList, summary="Tickets of the agent's groups")
    async def list_tickets(
        agent: Agent = Depends(agent_of),
        status: Annotated[list[TicketStatus] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> TicketList:
        """The newest tickets the agent may see (a lead sees every group)."""
        found = await reports.tickets(agent, statuses=tuple(status or ()), limit=limit)
        return TicketList(tickets=[_ticket_out(t) for t in found])

    @router.get(
        "/tickets/{number}",
        response_model=TicketDetailOut,
        responses=NOT_FOUND,
        summary="One ticket with its event log",
    )
    async def get_ticket(
        number: Annotated[str, PathParam(min_length=1, max_length=32)],
        agent: Agent = Depends(agent_of),
    ) -> TicketDetailOut:
        detail = await reports.ticket(number, agent)
        if detail is None:
            raise HTTPException(status_code=404, detail="not found")
        return _ticket_detail_out(detail)

    @router.get(
        "/conversations/{conversation_id}",
        response_model=ConversationCard,
        responses=NOT_FOUND,
        summary="A conversation's context card",
    )
    async def get_conversation(
        conversation_id: Annotated[int, PathParam(ge=1, le=MAX_ID)],
        agent: Agent = Depends(agent_of),
    ) -> ConversationCard:
        try:
            context = await agents.context(conversation_id, agent)
        except AgentActionRefused:
            raise HTTPException(status_code=404, detail="not found") from None
        return _card(context)

    @router.get(
        "/knowledge/search",
        response_model=KnowledgeSearchOut,
        responses={503: {"model": ErrorBody, "description": "No knowledge base is loaded"}},
        summary="Ranked knowledge base matches and the answer/suggest/refuse decision",
    )
    async def search_knowledge(
        q: Annotated[str, Query(min_length=1, max_length=500)],
        agent: Agent = Depends(agent_of),
        limit: Annotated[int, Query(ge=1, le=20)] = 5,
    ) -> KnowledgeSearchOut:
        found = reports.search_knowledge(q, limit=limit)
        if found is None:
            raise HTTPException(status_code=503, detail="no knowledge base is loaded")
        return KnowledgeSearchOut.model_validate(found)

    @router.get(
        "/alerts",
        response_model=AlertList,
        responses={403: {"model": ErrorBody, "description": "Team leads only"}},
        summary="Alerts for team leads (abuse, mail loops, failed deliveries)",
    )
    async def list_alerts(
        agent: Agent = Depends(agent_of),
        kind: Annotated[str | None, Query(max_length=32)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> AlertList:
        if not agent.is_lead:
            raise HTTPException(status_code=403, detail="team leads only")
        found = await reports.alerts(kind=kind, limit=limit)
        return AlertList(alerts=[AlertOut.model_validate(a) for a in found])

    return router


__all__ = ["api_router"]
