"""ORM models. Alembic migrations under ``storage/migrations`` are the schema's source of
truth in a database; these classes must stay in step with them (a test checks)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        tzinfo = value.tzinfo
        if tzinfo is UTC:  # what the clock gives: nothing to convert
            return value
        if tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


Json = JSON().with_variant(JSON(none_as_null=True), "postgresql")
Id = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Person(Base):
    """An employee, agent or lead. Same verified email = same person on every channel."""

    __tablename__ = "people"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320), unique=True)
    department: Mapped[str | None] = mapped_column(String(200))
    is_vip: Mapped[bool] = mapped_column(Boolean, default=False)
    email_bouncing: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Identity(Base):
    """How one channel knows a person (Slack user id, email address, web chat key)."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("channel", "external_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Agent(Base):
    """A person who may take conversations over, from the console or Slack."""

    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    password_hash: Mapped[str | None] = mapped_column(String(300))
    groups: Mapped[list[str]] = mapped_column(Json, default=list)
    is_lead: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    slack_user_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    credentials_changed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Conversation(Base):
    """One platform thread with one person, and who is answering it (bot or agent).

    ``state`` is the takeover state machine: ``bot`` → ``queued`` → ``agent`` → back to
    ``bot`` or ``resolved``.
    """

    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("channel", "thread_key"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    thread_key: Mapped[str] = mapped_column(String(500))
    reply_to: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="bot", index=True)
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"))
    agent_group: Mapped[str | None] = mapped_column(String(100))
    # no foreign key: tickets point back at conversations, and SQLite cannot add the
    # second half of a cycle later; the repository keeps the two in step
    ticket_id: Mapped[int | None] = mapped_column(Id, index=True)
    flow: Mapped[dict[str, Any] | None] = mapped_column(Json)
    flow_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    notes: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    flagged: Mapped[str | None] = mapped_column(String(32))
    escalated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_inbound_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    # for writing only: a ticket opened in the same flush gets its id into ticket_id by a
    # second UPDATE (post_update, since tickets point back here); never read (lazy="raise")
    ticket: Mapped[Ticket | None] = relationship(
        primaryjoin="foreign(Conversation.ticket_id) == Ticket.id",
        post_update=True,
        lazy="raise",
    )


class Message(Base):
    """Every message in or out of a conversation; private ones are agents' notes."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("channel", "external_id"),
        Index("ix_messages_conversation_id_id", "conversation_id", "id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"))
    direction: Mapped[str] = mapped_column(String(8))  # in | out
    channel: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str | None] = mapped_column(String(500))
    author_kind: Mapped[str] = mapped_column(String(16))  # person | bot | agent | system
    author_id: Mapped[int | None] = mapped_column(Id)
    kind: Mapped[str] = mapped_column(String(32), default="message")
    text: Mapped[str] = mapped_column(Text)
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    meta: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Ticket(Base):
    """An incident (INC), service request (REQ) or problem (PRB)."""

    __tablename__ = "tickets"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    number: Mapped[str] = mapped_column(String(20), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # incident | request | problem
    status: Mapped[str] = mapped_column(String(16), index=True)
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    service: Mapped[str | None] = mapped_column(String(100), index=True)
    agent_group: Mapped[str | None] = mapped_column(String(100))
    impact: Mapped[int | None] = mapped_column(Integer)
    urgency: Mapped[int | None] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer)
    priority_reason: Mapped[str] = mapped_column(Text, default="")
    vip_uplift: Mapped[bool] = mapped_column(Boolean, default=False)
    requester_id: Mapped[int] = mapped_column(ForeignKey("people.id"), index=True)
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"))
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"))
    problem_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    reopened_from_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    known_error: Mapped[bool] = mapped_column(Boolean, default=False)
    fields: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    sla_policy: Mapped[str | None] = mapped_column(String(100))
    first_response_due: Mapped[datetime | None] = mapped_column(UtcDateTime)
    resolution_due: Mapped[datetime | None] = mapped_column(UtcDateTime)
    first_response_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    paused_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    paused_seconds: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class TicketEvent(Base):
    """The event log of a ticket: who did what, public or internal."""

    __tablename__ = "ticket_events"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    actor_kind: Mapped[str] = mapped_column(String(16))  # person | bot | agent | system
    actor_id: Mapped[int | None] = mapped_column(Id)
    action: Mapped[str] = mapped_column(String(64))
    public: Mapped[bool] = mapped_column(Boolean, default=True)
    detail: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)


class TicketCounter(Base):
    """The next number per ticket prefix; bumped inside the opening transaction."""

    __tablename__ = "ticket_counters"

    prefix: Mapped[str] = mapped_column(String(8), primary_key=True)
    last_value: Mapped[int] = mapped_column(Integer, default=0)


class InboundReceipt(Base):
    """One row per inbound message ever seen: the durable dedupe ledger.

    ``status`` is ``handled`` or ``kept`` (stored without an answer, ``reason`` says why).
    """

    __tablename__ = "inbound_receipts"
    __table_args__ = (UniqueConstraint("channel", "external_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16), default="handled")
    reason: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[int | None] = mapped_column(Id)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # when a poller claimed the platform-side clean-up (an IMAP move), so that two
    # pollers racing on one mailbox archive a message once
    archived_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class InboxRow(Base):
    """An inbound message accepted quickly (a Slack event acked within 3 s) and handled
    later by the inbox worker, with retry: nothing is lost when handling fails."""

    __tablename__ = "inbox"
    __table_args__ = (
        UniqueConstraint("channel", "external_id"),
        Index("ix_inbox_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(500))
    payload: Mapped[dict[str, Any]] = mapped_column(Json)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime)
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    handled_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class OutboxRow(Base):
    """An outbound message committed with the state change that caused it.

    ``status``: ``pending`` → ``sending`` (claimed; the ambiguous window once the send
    has started) → ``sent`` | ``failed`` | ``ambiguous`` (a crash left it unknown whether
    the platform got it; shown to agents, never resent blindly).
    """

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))
    payload: Mapped[dict[str, Any]] = mapped_column(Json)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime)
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    send_started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    platform_id: Mapped[str | None] = mapped_column(String(500), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Promise(Base):
    """A promise made to a requester (first response by…, next update by…)."""

    __tablename__ = "promises"
    __table_args__ = (Index("ix_promises_status_due_at", "status", "due_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # first_response | next_update | resolution
    due_at: Mapped[datetime] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    settled_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Subscription(Base):
    """A person who wants a service's notices."""

    __tablename__ = "subscriptions"
    __table_args__ = (UniqueConstraint("person_id", "service"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"))
    service: Mapped[str] = mapped_column(String(100), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Outage(Base):
    """A broadcast major incident on a service."""

    __tablename__ = "outages"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    service: Mapped[str] = mapped_column(String(100), index=True)
    title: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(16), default="active")
    message: Mapped[str] = mapped_column(Text, default="")
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    next_update_due: Mapped[datetime | None] = mapped_column(UtcDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Csat(Base):
    """A satisfaction survey answer for a resolved ticket."""

    __tablename__ = "csat"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), unique=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"))
    score: Mapped[int | None] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text)
    asked_at: Mapped[datetime] = mapped_column(UtcDateTime)
    answered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class ArticleStats(Base):
    """How often a knowledge article was offered, accepted and rejected: one shard of it.

    An article's counts are the sum of its shards. Rounds in flight at once add to shards
    of their own (:class:`~storage.repositories.KnowledgeFeedback`), so none waits for
    another's commit to count the same article."""

    __tablename__ = "kb_article_stats"

    article_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True, server_default="0")
    offered: Mapped[int] = mapped_column(Integer, default=0)
    accepted: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)


class RefusedQuery(Base):
    """A question the knowledge base could not answer: material for new articles."""

    __tablename__ = "kb_refused_queries"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    query: Mapped[str] = mapped_column(Text)
    best_article_id: Mapped[str | None] = mapped_column(String(200))
    best_confidence: Mapped[float | None] = mapped_column()
    conversation_id: Mapped[int | None] = mapped_column(Id)
    at: Mapped[datetime] = mapped_column(UtcDateTime)


class Alert(Base):
    """Something a lead must see: an abuse flag, a mail loop, a failed delivery."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    summary: Mapped[str] = mapped_column(Text)
    conversation_id: Mapped[int | None] = mapped_column(Id)
    detail: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
