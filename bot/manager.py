"""The conversation manager: one inbound message in, one transaction, replies in the outbox.

``handle`` drops a repeated (channel, external id), resolves the sender to a person,
finds or opens the conversation, stores the message and then either relays it to the
agent who owns the conversation or lets the router answer. Replies are outbox rows
committed with everything else; the dispatcher delivers them after the commit.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.clock import Clock
from bot.errors import TransientError
from bot.events import ConversationEvent, EventBus
from bot.outgoing import enqueue_replies
from bot.turn import Reply, Turn
from bot.types import HandleResult, Inbound, Outbound
from storage.db import Database
from storage.locks import AdvisoryLocks
from storage.models import Conversation, Message, Person
from storage.repositories import Alerts, Conversations, Outbox, People, Receipts, Tickets

logger = logging.getLogger(__name__)

AGENT_STATES = ("queued", "agent")


class Router(Protocol):
    """Decides how the bot answers one turn (see bot/router.py)."""

    async def route(self, turn: Turn) -> None: ...


class AgentSurface(Protocol):
    """Somewhere agents work outside the console (the Slack triage channel).

    Called inside the manager's transaction; what it returns is queued in the outbox with
    everything else, so an escalation card or a relayed message is never lost. The web
    console needs no surface: it reads the database and follows the event bus.
    """

    async def escalated(
        self, session: AsyncSession, conversation: Conversation, person: Person, reason: str
    ) -> list[Outbound]: ...

    async def relay(
        self, session: AsyncSession, conversation: Conversation, person: Person, message: Message
    ) -> list[Outbound]: ...


class ConversationManager:
    """The one entry point every channel hands its inbound messages to."""

    def __init__(
        self,
        database: Database,
        router: Router,
        clock: Clock,
        *,
        events: EventBus | None = None,
        on_enqueued: Callable[[], None] | None = None,
        surfaces: Sequence[AgentSurface] = (),
        loop_guard_channels: Sequence[str] = ("email",),
        auto_reply_cap_per_hour: int = 10,
    ) -> None:
        self.db = database
        self.router = router
        self.clock = clock
        self.events = events or EventBus()
        self._on_enqueued = on_enqueued
        self.surfaces: list[AgentSurface] = list(surfaces)
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self.loop_guard_channels = set(loop_guard_channels)
        self.auto_reply_cap_per_hour = auto_reply_cap_per_hour
        self.node_locks = AdvisoryLocks(database)

    def _lock(self, inbound: Inbound) -> asyncio.Lock:
        key = (inbound.channel, inbound.thread_key)
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    async def handle(self, inbound: Inbound) -> HandleResult:
        """Handle one inbound message exactly once; a repeat is recognised and dropped."""
        async with self._lock(inbound):
            try:
                result, events = await self._handle_locked(inbound)
            except DBAPIError as exc:
                # the database is unreachable, busy or dropped the connection (R47): the
                # caller should retry later, and must not count this against the message
                # (a poller would quarantine it)
                if not (
                    isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated
                ):
                    raise
                raise TransientError(f"database unavailable: {type(exc).__name__}") from exc
        for event in events:
            self.events.publish(event)
        if result.outbox_ids and self._on_enqueued is not None:
            self._on_enqueued()
        return result

    def exclusive(self, name: str) -> AbstractAsyncContextManager[asyncio.Event]:
        """Hold ``name`` alone among every node on this database (the email poller holds
        its mailbox), waiting while another node holds it.

        The event is set when the hold is lost (on PostgreSQL, an advisory lock on a
        connection of its own; that connection died): stop, leave the block and enter
        again to wait for the lock. On SQLite (one process) it is held at once.
        """
        return self.node_locks.hold(name)

    async def claim_archive(
        self, channel: str, external_id: str, *, stale_after: timedelta = timedelta(minutes=5)
    ) -> bool:
        """May the caller do the platform-side clean-up of a handled message (move an
        email to the processed folder)? One caller wins; a claim whose holder died is
        taken over after ``stale_after``."""
        return external_id in await self.claim_archives(
            channel, [external_id], stale_after=stale_after
        )

    async def claim_archives(
        self,
        channel: str,
        external_ids: Sequence[str],
        *,
        stale_after: timedelta = timedelta(minutes=5),
    ) -> set[str]:
        """:meth:`claim_archive` for a batch (one transaction): the ids this caller won."""
        if not external_ids:
            return set()
        async with self.db.transaction() as session:
            return await Receipts(session).claim_archives(
                channel, external_ids, now=self.clock.now(), stale_after=stale_after
            )

    async def _handle_locked(
        self, inbound: Inbound
    ) -> tuple[HandleResult, list[ConversationEvent]]:
        events: list[ConversationEvent] = []
        async with self.db.transaction() as session:
            now = self.clock.now()
            fresh = await Receipts(session).record(
                inbound.channel, inbound.external_id, alt_ids=inbound.alt_ids, now=now
            )
            if not fresh:
                logger.info(
                    "inbound.duplicate channel=%s external_id=%s",
                    inbound.channel,
                    inbound.external_id,
                )
                return HandleResult(duplicate=True), events
            person, new_person = await self._resolve_person(session, inbound, now)
            conversation = await self._find_conversation(session, inbound, person, now)
            message = await Conversations(session).add_message(
                conversation,
                direction="in",
                author_kind="person",
                author_id=person.id,
                text=inbound.text,
                external_id=inbound.external_id,
                kind=inbound.kind,
                now=now,
                meta={k: v for k, v in inbound.meta.items() if _jsonable(v)},
                defer=True,
            )
            routed = inbound.kind == "message" and conversation.state not in AGENT_STATES
            if not routed:
                await Conversations(session).store(message, conversation)
                events.append(self._message_event(conversation, message))
            if inbound.kind != "message":
                reason = str(inbound.meta.get("reason") or f"{inbound.kind}: stored, not answered")
                await self._handle_machine_mail(session, inbound, conversation, now)
                await Receipts(session).settle(
                    inbound.channel,
                    inbound.external_id,
                    status="kept",
                    reason=reason,
                    message_id=message.id,
                    alt_ids=inbound.alt_ids,
                )
                return (
                    HandleResult(
                        duplicate=False,
                        conversation_id=conversation.id,
                        message_id=message.id,
                        kept_reason=reason,
                        route="kept",
                    ),
                    events,
                )
            if conversation.state in AGENT_STATES:
                outbox_ids = await self._relay(session, conversation, person, message, now)
                await Receipts(session).settle(
                    inbound.channel,
                    inbound.external_id,
                    status="handled",
                    reason="relayed to agent",
                    message_id=message.id,
                    alt_ids=inbound.alt_ids,
                )
                return (
                    HandleResult(
                        duplicate=False,
                        conversation_id=conversation.id,
                        message_id=message.id,
                        outbox_ids=tuple(outbox_ids),
                        route="relayed",
                    ),
                    events,
                )
            turn = Turn(
                session=session,
                inbound=inbound,
                person=person,
                conversation=conversation,
                message=message,
                now=now,
            )
            await self.router.route(turn)
            message.meta = {**message.meta, "route": turn.route, "reason": turn.reason}
            replies = await self._guard_loops(session, turn, new_person=new_person)
            outbox_ids = []
            if turn.escalation is not None:
                # the agents' card shows the transcript: this message must be in it
                await Conversations(session).store(message, conversation)
                for surface in self.surfaces:
                    for outbound in await surface.escalated(
                        session, conversation, person, turn.escalation
                    ):
                        row = await Outbox(session).enqueue(
                            channel=outbound.channel,
                            payload=outbound.to_json(),
                            now=now,
                            conversation_id=conversation.id,
                        )
                        outbox_ids.append(row.id)
            written = await enqueue_replies(
                session,
                conversation,
                replies,
                now=now,
                after=None if turn.escalation is not None else message,
            )
            events.append(self._message_event(conversation, message))
            for out_message, row in written:
                outbox_ids.append(row.id)
                events.append(
                    ConversationEvent(
                        "message",
                        conversation.id,
                        {"message_id": out_message.id, "direction": "out"},
                    )
                )
            for extra in turn.after_commit:
                if isinstance(extra, ConversationEvent):
                    events.append(extra)
            if inbound.alt_ids:
                # the receipt is already "handled"; only aliases need the message id, so
                # a reply that names this message by an alias can find its conversation
                await Receipts(session).settle(
                    inbound.channel,
                    inbound.external_id,
                    status="handled",
                    reason=None,
                    message_id=message.id,
                    alt_ids=inbound.alt_ids,
                )
            logger.info(
                "inbound.handled channel=%s conversation=%s route=%s replies=%d",
                inbound.channel,
                conversation.id,
                turn.route,
                len(outbox_ids),
            )
            return (
                HandleResult(
                    duplicate=False,
                    conversation_id=conversation.id,
                    message_id=message.id,
                    outbox_ids=tuple(outbox_ids),
                    route=turn.route,
                ),
                events,
            )

    @staticmethod
    def _message_event(conversation: Conversation, message: Message) -> ConversationEvent:
        return ConversationEvent(
            "message",
            conversation.id,
            {"message_id": message.id, "direction": "in", "state": conversation.state},
        )

    async def _resolve_person(
        self, session: AsyncSession, inbound: Inbound, now: datetime
    ) -> tuple[Person, bool]:
        """The sender's person, and whether this transaction created it."""
        people = People(session)
        sender = inbound.sender
        verified_email = sender.email.lower() if sender.email and sender.email_verified else None
        person = await people.by_identity(inbound.channel, sender.external_id)
        if person is not None:
            if (
                verified_email
                and person.email is None
                and await people.by_email(verified_email) is None
            ):
                person.email = verified_email
            if sender.display_name and not person.display_name:
                person.display_name = sender.display_name
            return person, False
        if verified_email:
            person, created = await people.open_by_email(
                verified_email, display_name=sender.display_name, now=now
            )
        else:
            person, created = await people.create(display_name=sender.display_name, now=now), True
        owner = await people.link_identity(
            person.id,
            channel=inbound.channel,
            external_id=sender.external_id,
            display_name=sender.display_name,
            email=verified_email,
            verified=verified_email is not None,
            now=now,
        )
        if owner != person.id:  # lost a race with a concurrent first message
            winner = await people.get(owner)
            assert winner is not None
            return winner, False
        return person, created

    async def _find_conversation(
        self,
        session: AsyncSession,
        inbound: Inbound,
        person: Person,
        now: datetime,
    ) -> Conversation:
        conversations = Conversations(session)
        conversation = None
        if inbound.thread_key.startswith("conversation:"):
            # a channel-verified reference to one of our conversations (a signed email
            # reply token); it counts only for the same person on the same channel
            ref = inbound.thread_key.partition(":")[2]
            if ref.isdigit():
                candidate = await conversations.get(int(ref))
                if (
                    candidate is not None
                    and candidate.person_id == person.id
                    and candidate.channel == inbound.channel
                ):
                    conversation = candidate
        if conversation is None:
            conversation = await conversations.by_thread(inbound.channel, inbound.thread_key)
        if conversation is None and inbound.references:
            conversation = await conversations.by_reference(
                inbound.channel, inbound.references, person.id
            )
        if conversation is None and inbound.ticket_hint:
            ticket = await Tickets(session).by_number(inbound.ticket_hint)
            if ticket is not None and ticket.requester_id == person.id and ticket.conversation_id:
                conversation = await conversations.get(ticket.conversation_id)
        if conversation is None:
            conversation, _ = await conversations.find_or_open(
                channel=inbound.channel,
                thread_key=inbound.thread_key,
                person_id=person.id,
                reply_to=dict(inbound.reply_to),
                now=now,
            )
        elif inbound.reply_to:
            conversation.reply_to = dict(inbound.reply_to)
        return conversation

    async def _relay(
        self,
        session: AsyncSession,
        conversation: Conversation,
        person: Person,
        message: Message,
        now: datetime,
    ) -> list[int]:
        ids: list[int] = []
        for surface in self.surfaces:
            for outbound in await surface.relay(session, conversation, person, message):
                row = await Outbox(session).enqueue(
                    channel=outbound.channel,
                    payload=outbound.to_json(),
                    now=now,
                    conversation_id=conversation.id,
                )
                ids.append(row.id)
        return ids

    async def _handle_machine_mail(
        self,
        session: AsyncSession,
        inbound: Inbound,
        conversation: Conversation,
        now: datetime,
    ) -> None:
        """Auto-replies, bounces, receipts: stored, never answered; bounces mark addresses."""
        if inbound.kind != "bounce":
            return
        failed = inbound.meta.get("failed_recipients") or []
        people = People(session)
        for address in failed:
            if isinstance(address, str) and await people.mark_bouncing(address):
                logger.warning("inbound.bounce.address_marked channel=%s", inbound.channel)
        original = await Conversations(session).by_outbound_reference(
            inbound.channel, inbound.references
        )
        if original is not None and original.id != conversation.id:
            await Conversations(session).add_message(
                original,
                direction="in",
                author_kind="system",
                text=f"Delivery failed for {', '.join(map(str, failed)) or 'a recipient'}.",
                kind="bounce",
                private=True,
                now=now,
                meta={"bounce_message_conversation": conversation.id},
            )

    async def _guard_loops(
        self, session: AsyncSession, turn: Turn, *, new_person: bool
    ) -> list[Reply]:
        """Cap automatic replies per person on loop-prone channels (R19)."""
        if not turn.replies or turn.conversation.channel not in self.loop_guard_channels:
            return turn.replies
        since = turn.now - timedelta(hours=1)
        # a person this transaction created has had no replies yet: nothing to count
        sent = (
            0
            if new_person
            else await Conversations(session).bot_replies_to_person_since(turn.person.id, since)
        )
        if sent + len(turn.replies) <= self.auto_reply_cap_per_hour:
            return turn.replies
        notes = dict(turn.conversation.notes or {})
        if not notes.get("loop_alerted_at") or notes["loop_alerted_at"] < since.isoformat():
            notes["loop_alerted_at"] = turn.now.isoformat()
            turn.conversation.notes = notes
            await Alerts(session).raise_alert(
                "mail_loop",
                f"Automatic replies to person {turn.person.id} capped at "
                f"{self.auto_reply_cap_per_hour}/hour: a mail loop is likely.",
                now=turn.now,
                conversation_id=turn.conversation.id,
            )
            logger.warning("inbound.loop_capped person=%s", turn.person.id)
        return []


def _jsonable(value: object) -> bool:
    return isinstance(value, str | int | float | bool | type(None) | list | dict | tuple)
