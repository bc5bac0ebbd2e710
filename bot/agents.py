"""The agent side of takeover: queue, claim (atomic), reply, note, hand back, resolve.

Every agent surface (web console, Slack triage channel) goes through :class:`AgentDesk`,
so the rules hold everywhere: only an active agent of the conversation's group (or a
lead) acts; a claim is a compare-and-set, so two agents claiming at once: one wins; while
an agent owns a conversation the bot says nothing in it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from sqlalchemy.exc import IntegrityError

from bot.catalog import Catalog
from bot.clock import Clock
from bot.events import ConversationEvent, EventBus
from bot.outgoing import enqueue_reply
from bot.tickets import TicketDesk
from bot.turn import Reply
from storage.db import Database
from storage.models import Agent, Conversation
from storage.repositories import Agents, Conversations, People, Tickets

logger = logging.getLogger(__name__)

_hasher = PasswordHasher()


class AgentActionRefused(Exception):
    """The agent may not do this (not theirs, wrong group, inactive, wrong state)."""


@dataclass(frozen=True, slots=True)
class MessageView:
    id: int
    direction: str
    author_kind: str
    text: str
    private: bool
    channel: str
    kind: str
    at: datetime
    buttons: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TicketView:
    number: str
    title: str
    status: str
    priority: int
    priority_reason: str


@dataclass(frozen=True, slots=True)
class ConversationContext:
    """What an agent needs at a glance: who, history, what the bot tried, why this priority."""

    conversation_id: int
    channel: str
    state: str
    agent_id: int | None
    agent_group: str | None
    person: dict[str, Any]
    ticket: TicketView | None
    recent_tickets: list[TicketView]
    transcript: list[MessageView]
    tried: dict[str, Any]
    escalation_reason: str | None
    flagged: str | None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, InvalidHashError):
        return False


class AgentDesk:
    """Agents' actions on conversations; each is one transaction plus events."""

    def __init__(
        self,
        database: Database,
        clock: Clock,
        *,
        catalog: Catalog,
        tickets: TicketDesk,
        events: EventBus,
        on_enqueued: Any = None,
    ) -> None:
        self.db = database
        self.clock = clock
        self.catalog = catalog
        self.tickets = tickets
        self.events = events
        self._on_enqueued = on_enqueued

    # accounts -------------------------------------------------------------------

    async def add_agent(
        self,
        username: str,
        *,
        password: str | None,
        display_name: str | None = None,
        email: str | None = None,
        groups: list[str] | None = None,
        is_lead: bool = False,
        slack_user_id: str | None = None,
    ) -> Agent:
        now = self.clock.now()
        async with self.db.transaction() as session:
            agent = Agent(
                username=username,
                display_name=display_name or username,
                email=email,
                password_hash=hash_password(password) if password else None,
                groups=groups or [],
                is_lead=is_lead,
                active=True,
                slack_user_id=slack_user_id,
                credentials_changed_at=now,
                created_at=now,
            )
            return await Agents(session).add(agent)

    async def ensure_external_agent(
        self, *, channel: str, external_id: str, display_name: str | None
    ) -> Agent:
        """The agent behind a platform user who is configured as an agent (Slack).

        Created on first use, with no password (no console login) and no groups, which
        means every group; an administrator can narrow it with ``deskbot agent``.
        """
        if channel != "slack":
            raise ValueError(f"no external agents for channel {channel!r}")
        async with self.db.transaction() as session:
            return await Agents(session).ensure_slack_agent(
                external_id, display_name=display_name or external_id, now=self.clock.now()
            )

    async def authenticate(self, username: str, password: str) -> Agent | None:
        async with self.db.read() as session:
            agent = await Agents(session).by_username(username)
        if agent is None or not agent.active:
            verify_password(None, password)
            return None
        return agent if verify_password(agent.password_hash, password) else None

    async def get_agent(self, agent_id: int) -> Agent | None:
        async with self.db.read() as session:
            return await Agents(session).get(agent_id)

    async def set_password(self, agent_id: int, password: str) -> None:
        async with self.db.transaction() as session:
            agent = await Agents(session).get(agent_id)
            if agent is None:
                raise AgentActionRefused("no such agent")
            agent.password_hash = hash_password(password)
            agent.credentials_changed_at = self.clock.now()

    async def deactivate(self, agent_id: int) -> None:
        async with self.db.transaction() as session:
            agent = await Agents(session).get(agent_id)
            if agent is None:
                raise AgentActionRefused("no such agent")
            agent.active = False
            agent.credentials_changed_at = self.clock.now()

    # queue and context -----------------------------------------------------------

    async def queue(self, agent: Agent) -> list[Conversation]:
        async with self.db.read() as session:
            rows = await Conversations(session).in_state(("queued", "agent"))
        return [c for c in rows if self._may_act(agent, c)]

    async def context(self, conversation_id: int, agent: Agent) -> ConversationContext:
        async with self.db.read() as session:
            conversation = await Conversations(session).get(conversation_id)
            if conversation is None or not self._may_act(agent, conversation):
                raise AgentActionRefused("not found")
            person = await People(session).get(conversation.person_id)
            assert person is not None
            tickets = await Tickets(session).of_requester(person.id, limit=5)
            current = (
                await Tickets(session).get(conversation.ticket_id)
                if conversation.ticket_id
                else None
            )
            messages = await Conversations(session).messages(conversation.id)
        notes = conversation.notes or {}
        return ConversationContext(
            conversation_id=conversation.id,
            channel=conversation.channel,
            state=conversation.state,
            agent_id=conversation.agent_id,
            agent_group=conversation.agent_group,
            person={
                "id": person.id,
                "name": person.display_name,
                "email": person.email,
                "department": person.department,
                "vip": bool(person.is_vip) or self.catalog.is_vip(person.email),
            },
            ticket=_ticket_view(current) if current else None,
            recent_tickets=[_ticket_view(t) for t in tickets],
            transcript=[
                MessageView(
                    id=m.id,
                    direction=m.direction,
                    author_kind=m.author_kind,
                    text=m.text,
                    private=m.private,
                    channel=m.channel,
                    kind=m.kind,
                    at=m.created_at,
                    buttons=list((m.meta or {}).get("buttons") or []),
                )
                for m in messages
            ],
            tried={
                "offered_articles": list(notes.get("offered_articles", [])),
                "rejected_articles": list(notes.get("rejected_articles", [])),
                "frustration": notes.get("frustration"),
            },
            escalation_reason=notes.get("escalation_reason"),
            flagged=conversation.flagged,
        )

    def _may_act(self, agent: Agent, conversation: Conversation) -> bool:
        if not agent.active:
            return False
        if agent.is_lead or not agent.groups:
            return True
        group = conversation.agent_group or "service-desk"
        return group in agent.groups or "service-desk" in agent.groups and group == "service-desk"

    # actions -----------------------------------------------------------------------

    async def claim(self, conversation_id: int, agent: Agent) -> bool:
        """Take the conversation (queued or bot → agent). True for exactly one claimer."""
        now = self.clock.now()
        async with self.db.transaction() as session:
            conversation = await Conversations(session).get(conversation_id)
            fresh = await Agents(session).get(agent.id)
            if conversation is None or fresh is None or not self._may_act(fresh, conversation):
                raise AgentActionRefused("not found")
            won = await Conversations(session).transition(
                conversation_id,
                from_states=("queued", "bot"),
                to_state="agent",
                now=now,
                agent_id=agent.id,
            )
            if not won:
                return False
            await session.refresh(conversation)
            conversation.flow = None
            conversation.flow_expires_at = None
            await self._log_ticket(session, conversation, "claimed", agent, now, public=False)
            if conversation.ticket_id:
                ticket = await Tickets(session).get(conversation.ticket_id)
                if ticket is not None:
                    ticket.assignee_id = agent.id
                    if ticket.status == "new":
                        await self.tickets.set_status(
                            session, ticket, "open", now=now, actor_kind="agent", actor_id=agent.id
                        )
            await enqueue_reply(
                session,
                conversation,
                Reply(f"{agent.display_name} from the service desk has joined the conversation."),
                now=now,
                author_kind="system",
            )
        self._publish(conversation_id, "state", {"state": "agent", "agent_id": agent.id})
        return True

    async def reply(
        self,
        conversation_id: int,
        agent: Agent,
        text: str,
        *,
        private: bool = False,
        external_id: str | None = None,
    ) -> int:
        """An agent's message: to the person on their channel, or an internal note.

        ``external_id`` names the agent's platform event (a Slack event id): the same
        event handled twice, on any node, stores and sends one message.
        """
        try:
            return await self._reply(conversation_id, agent, text, private, external_id)
        except IntegrityError:
            if external_id is None:
                raise
            # the same platform event, handled at the same moment on another node
            async with self.db.read() as session:
                conversation = await Conversations(session).get(conversation_id)
                assert conversation is not None
                seen = await Conversations(session).message_by_external_id(
                    conversation.channel, external_id
                )
            if seen is None:
                raise
            return seen.id

    async def _reply(
        self,
        conversation_id: int,
        agent: Agent,
        text: str,
        private: bool,
        external_id: str | None,
    ) -> int:
        text = text.strip()
        if not text:
            raise AgentActionRefused("empty message")
        now = self.clock.now()
        async with self.db.transaction() as session:
            conversation = await self._owned(session, conversation_id, agent)
            if external_id is not None:
                seen = await Conversations(session).message_by_external_id(
                    conversation.channel, external_id
                )
                if seen is not None:
                    return seen.id
            if private:
                note = await Conversations(session).add_message(
                    conversation,
                    direction="out",
                    author_kind="agent",
                    author_id=agent.id,
                    text=text,
                    private=True,
                    kind="note",
                    now=now,
                    external_id=external_id,
                )
                await self._log_ticket(session, conversation, "note", agent, now, public=False)
                message_id = note.id
            else:
                reply, _ = await enqueue_reply(
                    session,
                    conversation,
                    Reply(text),
                    now=now,
                    author_kind="agent",
                    author_id=agent.id,
                    automatic=False,
                    external_id=external_id,
                )
                if conversation.ticket_id:
                    ticket = await Tickets(session).get(conversation.ticket_id)
                    if ticket is not None and ticket.first_response_at is None:
                        ticket.first_response_at = now
                    await self._log_ticket(session, conversation, "agent_reply", agent, now)
                assert reply.id is not None
                message_id = reply.id
        self._publish(conversation_id, "message", {"message_id": message_id, "private": private})
        return message_id

    async def hand_back(self, conversation_id: int, agent: Agent) -> None:
        now = self.clock.now()
        async with self.db.transaction() as session:
            conversation = await self._owned(session, conversation_id, agent)
            await Conversations(session).transition(
                conversation_id, from_states=("agent",), to_state="bot", now=now
            )
            await self._log_ticket(session, conversation, "handed_back", agent, now, public=False)
            await enqueue_reply(
                session,
                conversation,
                Reply("You're back with the deskbot. Ask me anything, or say *talk to a human*."),
                now=now,
                author_kind="system",
            )
        self._publish(conversation_id, "state", {"state": "bot"})

    async def resolve(self, conversation_id: int, agent: Agent, *, note: str | None = None) -> None:
        now = self.clock.now()
        async with self.db.transaction() as session:
            conversation = await self._owned(session, conversation_id, agent, allow_queued=True)
            await Conversations(session).transition(
                conversation_id, from_states=("agent", "queued"), to_state="resolved", now=now
            )
            number = None
            if conversation.ticket_id:
                ticket = await Tickets(session).get(conversation.ticket_id)
                if ticket is not None and ticket.status not in ("resolved", "closed"):
                    await self.tickets.set_status(
                        session,
                        ticket,
                        "resolved",
                        now=now,
                        actor_kind="agent",
                        actor_id=agent.id,
                        note=note,
                    )
                    number = ticket.number
            text = (
                f"{agent.display_name} marked {number or 'this conversation'} as resolved. "
                "Reply here if the problem comes back."
            )
            await enqueue_reply(
                session,
                conversation,
                Reply(text, ticket_number=number),
                now=now,
                author_kind="system",
            )
            # the next message from the person starts fresh with the bot
            await Conversations(session).transition(
                conversation_id, from_states=("resolved",), to_state="bot", now=now
            )
        self._publish(conversation_id, "state", {"state": "resolved"})

    async def _owned(
        self, session: Any, conversation_id: int, agent: Agent, *, allow_queued: bool = False
    ) -> Conversation:
        conversation = await Conversations(session).get(conversation_id)
        fresh = await Agents(session).get(agent.id)
        if conversation is None or fresh is None or not self._may_act(fresh, conversation):
            raise AgentActionRefused("not found")
        if conversation.state == "agent" and conversation.agent_id == agent.id:
            return conversation
        if allow_queued and conversation.state == "queued":
            return conversation
        raise AgentActionRefused("claim the conversation first")

    async def _log_ticket(
        self,
        session: Any,
        conversation: Conversation,
        action: str,
        agent: Agent,
        now: datetime,
        *,
        public: bool = True,
    ) -> None:
        if conversation.ticket_id is None:
            return
        ticket = await Tickets(session).get(conversation.ticket_id)
        if ticket is not None:
            await Tickets(session).log(
                ticket, action=action, actor_kind="agent", actor_id=agent.id, now=now, public=public
            )

    def _publish(self, conversation_id: int, kind: str, data: dict[str, Any]) -> None:
        self.events.publish(ConversationEvent(kind, conversation_id, data))
        if self._on_enqueued is not None:
            self._on_enqueued()


def _ticket_view(ticket: Any) -> TicketView:
    return TicketView(
        number=ticket.number,
        title=ticket.title,
        status=ticket.status,
        priority=ticket.priority,
        priority_reason=ticket.priority_reason,
    )
