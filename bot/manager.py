"""The conversation manager: inbound messages in, replies in the outbox, in rounds.

``handle`` queues one inbound message and waits for what became of it. A worker takes
whatever is queued (up to ``max_batch`` messages) and handles it in *rounds*. A round
holds at most one message per thread, per sender and per receipt id, and runs in one
transaction with set-based statements: the receipts go in as one INSERT, the senders and
their conversations come from one SELECT each, first-time senders get their people,
identities and conversations in one INSERT each, and at the end every new message is one
INSERT and every outbox row one more. At a trickle a round is one message; under load (an
outage announcement, a burst of mail, a busy web chat) the statements and the commit are
shared by the whole round, so the cost per message falls as the load rises (while
messages arrive faster than one per two ``linger``, a round waits ``linger`` for company).
The later messages of a thread or a sender wait for the next round, so each thread is
handled in the order its messages arrived, and a message sees everything its
predecessors did. The replies' outbox rows are handed to the dispatcher after the commit
(``outbox``), so it sends them without claiming them first. On PostgreSQL two rounds are
in flight at once: the next begins once the one before has routed its messages and is
writing them, and a message of a thread or sender still in flight waits for its commit.
While the database is slow to commit (the oldest round in flight has been writing for
``slow_commit``: a disk's fsync stalling, a busy server), more rounds begin, up to
``pipeline_when_slow``, so what arrives meanwhile is routed and written, ready to commit
as soon as the database is back, instead of waiting to begin.

When a round fails, each of its messages is handled again in a round of its own, so one
bad message cannot hold the others back, and whatever the failed round did was rolled
back. For each message: drop a repeated (channel, external id), resolve the sender to a
person, find or open the conversation, store the message and then either relay it to the
agent who owns the conversation or let the router answer. Replies are outbox rows
committed with everything else; the dispatcher delivers them after the commit.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from bot import metrics
from bot.clock import Clock
from bot.errors import TransientError
from bot.events import ConversationEvent, EventBus
from bot.outbox import Handed
from bot.outgoing import StagedReplies
from bot.turn import Reply, Turn
from bot.types import HandleResult, Inbound, Outbound
from storage.db import Database
from storage.locks import AdvisoryLocks
from storage.models import Conversation, OutboxRow, Person
from storage.repositories import (
    Alerts,
    Conversations,
    KnowledgeFeedback,
    MessageRow,
    Outbox,
    People,
    Receipts,
    Tickets,
)

logger = logging.getLogger(__name__)

AGENT_STATES = ("queued", "agent")
_RATE_SAMPLE = 16  # arrivals remembered to tell the recent rate


class Router(Protocol):
    """Decides how the bot answers one turn (see bot/router.py)."""

    async def route(self, turn: Turn) -> None: ...


class OutboxHandoff(Protocol):
    """The dispatcher, as far as the manager hands it the rows of a round's replies
    (bot/outbox.py: inserted claimed, handed over after the commit, no claiming query)."""

    def claim_on_insert(self, channel: str, now: datetime) -> dict[str, Any] | None: ...

    def hand(self, rows: Sequence[Handed]) -> None: ...


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
        self,
        session: AsyncSession,
        conversation: Conversation,
        person: Person,
        message: MessageRow,
    ) -> list[Outbound]: ...


@dataclass(slots=True, eq=False)
class _Queued:
    inbound: Inbound
    future: asyncio.Future[HandleResult]
    queued_at: float


@dataclass(slots=True, eq=False)
class _Handled:
    """What one message of a round did; ids are read once the round has flushed."""

    inbound: Inbound
    conversation: Conversation
    message: MessageRow
    route: str
    state: str  # the conversation's state for the inbound message's event
    kept_reason: str | None = None
    outbox_rows: list[OutboxRow] = field(default_factory=list)
    replies: list[int] = field(default_factory=list)  # positions in the round's staged replies
    after_commit: list[ConversationEvent] = field(default_factory=list)
    settle: tuple[str, str | None] | None = None  # receipt (status, reason) with the message id


@dataclass(slots=True, eq=False)
class _Flight:
    """A round in flight: its messages, their keys, whether it has routed them."""

    items: list[_Queued]
    keys: set[tuple[str, str, str]]
    slot: int  # distinct among the rounds in flight: its shard of the article counts
    routed: bool = False
    routed_at: float = 0.0  # the event loop's time when it had routed its messages
    task: asyncio.Task[None] = field(init=False)


@dataclass(slots=True, eq=False)
class _Round:
    """The shared state of one round's transaction."""

    session: AsyncSession
    now: datetime
    people: dict[tuple[str, str], Person]
    threads: dict[tuple[str, str], Conversation]
    replies: StagedReplies
    feedback: dict[str, dict[str, int]] = field(default_factory=dict)
    created: set[int] = field(default_factory=set)  # people this round created
    opened: set[tuple[str, str]] = field(default_factory=set)  # threads it opened


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
        outbox: OutboxHandoff | None = None,
        surfaces: Sequence[AgentSurface] = (),
        loop_guard_channels: Sequence[str] = ("email",),
        auto_reply_cap_per_hour: int = 10,
        max_batch: int = 100,
        linger: float = 0.004,
        pipeline: int | None = None,
        pipeline_when_slow: int | None = None,
        slow_commit: float = 0.03,
    ) -> None:
        self.db = database
        self.router = router
        self.clock = clock
        self.events = events or EventBus()
        self._on_enqueued = on_enqueued
        self.outbox = outbox
        self.surfaces: list[AgentSurface] = list(surfaces)
        self.loop_guard_channels = set(loop_guard_channels)
        self.auto_reply_cap_per_hour = auto_reply_cap_per_hour
        self.max_batch = max_batch
        self.linger = linger
        """Seconds a round waits for company while messages arrive faster than one per two
        ``linger`` (0: never): at a moderate rate, a few messages per round cost far
        less than one each, for a few milliseconds more of latency."""
        self.pipeline = pipeline or (2 if database.is_postgres else 1)
        """Rounds in flight at once (default: two on PostgreSQL; one on SQLite, where
        a second write transaction would only wait for the first)."""
        self.pipeline_when_slow = max(
            self.pipeline, pipeline_when_slow or (8 if database.is_postgres else 1)
        )
        """Rounds in flight at once while the oldest of them has been writing for
        ``slow_commit`` seconds or more (default: eight on PostgreSQL, one on SQLite)."""
        self.slow_commit = slow_commit
        # this node's first shard of the article counts: another node's rounds most
        # likely count in other shards than this one's
        self._shard_base = random.randrange(KnowledgeFeedback.SHARDS)
        self.node_locks = AdvisoryLocks(database)
        self._queue: deque[_Queued] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._arrivals: deque[float] = deque(maxlen=_RATE_SAMPLE)

    # the queue ------------------------------------------------------------------------

    async def handle(self, inbound: Inbound) -> HandleResult:
        """Handle one inbound message exactly once; a repeat is recognised and dropped.

        Raises :class:`~bot.errors.TransientError` when the database is unavailable (try
        again later; the message was not taken), or whatever the message itself caused.
        A caller that stops waiting before its message's round began leaves it unhandled;
        after that, the round goes on and the message is handled.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[HandleResult] = loop.create_future()
        now = loop.time()
        self._queue.append(_Queued(inbound, future, now))
        self._arrivals.append(now)
        worker = self._worker
        if worker is not None and not worker.done() and worker.get_loop() is loop:
            self._wake.set()
        else:
            self._wake = asyncio.Event()  # of this loop, for this worker
            self._worker = loop.create_task(self._work(), name="manager.rounds")
            self._worker.add_done_callback(self._worker_stopped)
        return await future

    def _busy(self) -> bool:
        """Are messages arriving at more than one per two ``linger`` lately (so that
        waiting ``linger`` is likely to bring at least half a message more)?"""
        if not self.linger or len(self._arrivals) < _RATE_SAMPLE:
            return False
        since = asyncio.get_running_loop().time() - self._arrivals[0]
        return since < 2 * _RATE_SAMPLE * self.linger

    def _worker_stopped(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("manager.worker.crashed", exc_info=task.exception())

    async def _work(self) -> None:
        """Take what is queued, round after round, until nothing is queued and no round is
        in flight; then end (the next ``handle`` starts a new worker).

        Up to ``pipeline`` rounds are in flight at once: the next round begins as soon as
        the one before it has routed its messages and is writing them, so the bot's work
        on one round runs while the database writes and commits the other. A message
        whose thread, sender or receipt id is in a round still in flight waits for that
        round's commit, so it sees everything its predecessors did."""
        flights: list[_Flight] = []
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._wake.clear()
                slow_at = None  # when the oldest round in flight counts as slow
                if self._queue and all(flight.routed for flight in flights):
                    may_fly = len(flights) < self.pipeline
                    if not may_fly and len(flights) < self.pipeline_when_slow:
                        slow_at = flights[0].routed_at + self.slow_commit
                        may_fly = loop.time() >= slow_at
                    if may_fly:
                        if len(self._queue) < self.max_batch and self._busy():
                            await asyncio.sleep(self.linger)  # more are on their way
                        items = self._next_round(flights)
                        if items:
                            flights.append(self._fly(items, flights))
                            continue
                        slow_at = None  # what is queued waits for a round's commit
                elif not self._queue and not flights:
                    return
                timer = loop.call_at(slow_at, self._wake.set) if slow_at is not None else None
                try:
                    await self._wake.wait()
                finally:
                    if timer is not None:
                        timer.cancel()
        except BaseException:
            # cancelled (the loop is shutting down): nobody may wait for ever
            for flight in flights:
                flight.task.cancel()
            for item in [*(i for f in flights for i in f.items), *self._queue]:
                if not item.future.done():
                    item.future.cancel()
            self._queue.clear()
            raise

    def _next_round(self, flights: list[_Flight]) -> list[_Queued]:
        """Up to ``max_batch`` queued messages that may be handled together now: none
        shares a thread, sender or receipt id with another or with a round in flight.
        The others go back to the front of the queue, in the order they came."""
        batch: list[_Queued] = []
        while self._queue and len(batch) < self.max_batch:
            item = self._queue.popleft()
            if not item.future.done():  # its caller stopped waiting: not begun
                batch.append(item)
        busy = set().union(*(flight.keys for flight in flights))
        now, *later = _rounds(batch, busy)
        self._queue.extendleft(reversed([item for after in later for item in after]))
        return now

    def _fly(self, items: list[_Queued], flights: list[_Flight]) -> _Flight:
        taken = {flight.slot for flight in flights}
        slot = next(n for n in range(len(flights) + 1) if n not in taken)
        flight = _Flight(items, set().union(*(_keys(item.inbound) for item in items)), slot)
        loop = asyncio.get_running_loop()

        def routed() -> None:
            flight.routed = True
            flight.routed_at = loop.time()
            self._wake.set()

        def landed(task: asyncio.Task[None]) -> None:
            flights.remove(flight)
            self._wake.set()
            error = None if task.cancelled() else task.exception()
            if error is None:
                return
            logger.error("manager.round.crashed", exc_info=error)
            for item in items:  # nobody may wait for ever
                if not item.future.done():
                    item.future.set_exception(error)

        flight.task = loop.create_task(
            self._handle_round(items, routed, shard=self._shard_base + slot), name="manager.round"
        )
        flight.task.add_done_callback(landed)
        return flight

    async def _handle_round(
        self, items: list[_Queued], routed: Callable[[], None] | None = None, *, shard: int = 0
    ) -> None:
        try:
            results, events, handed = await self._run_round(
                [item.inbound for item in items], routed, shard=shard
            )
        except Exception as exc:
            if routed is not None:
                routed()  # what is left of this round is one message at a time
            if len(items) > 1:
                logger.warning(
                    "inbound.round.failed messages=%d error=%s: handling each alone",
                    len(items),
                    type(exc).__name__,
                )
                for item in items:
                    await self._handle_round([item], shard=shard)
                return
            [item] = items
            failure = _failure(exc)
            metrics.INBOUND.labels(item.inbound.channel, "failed").inc()
            if not item.future.done():
                item.future.set_exception(failure)
            return
        metrics.ROUND_MESSAGES.observe(len(items))
        loop = asyncio.get_running_loop()
        handed_ids = {row.row_id for row in handed}
        enqueued = False  # rows for the dispatcher to claim (the others are handed over)
        for item, result in zip(items, results, strict=True):
            outcome = "duplicate" if result.duplicate else (result.route or "handled")
            metrics.INBOUND.labels(item.inbound.channel, outcome.split(".")[0]).inc()
            metrics.HANDLE_SECONDS.labels(item.inbound.channel).observe(
                loop.time() - item.queued_at
            )
            if result.duplicate:
                logger.info(
                    "inbound.duplicate channel=%s external_id=%s",
                    item.inbound.channel,
                    item.inbound.external_id,
                )
            else:
                logger.info(
                    "inbound.handled channel=%s conversation=%s route=%s replies=%d",
                    item.inbound.channel,
                    result.conversation_id,
                    result.route,
                    len(result.outbox_ids),
                )
            enqueued = enqueued or any(row_id not in handed_ids for row_id in result.outbox_ids)
            if not item.future.done():
                item.future.set_result(result)
        for event in events:
            self.events.publish(event)
        if handed and self.outbox is not None:
            self.outbox.hand(handed)
        if enqueued and self._on_enqueued is not None:
            self._on_enqueued()

    # node-wide holds and platform clean-up --------------------------------------------

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

    # one round ------------------------------------------------------------------------

    async def _run_round(
        self,
        inbounds: list[Inbound],
        routed: Callable[[], None] | None = None,
        *,
        shard: int = 0,
    ) -> tuple[list[HandleResult], list[ConversationEvent], list[Handed]]:
        async with self.db.transaction() as session:
            now = self.clock.now()
            fresh = await Receipts(session).record_many(
                [(i.channel, i.external_id, i.alt_ids) for i in inbounds], now=now
            )
            live = [inbound for inbound, new in zip(inbounds, fresh, strict=True) if new]
            people = People(session)
            conversations = Conversations(session)
            known_people: dict[tuple[str, str], Person] = {}
            known_threads: dict[tuple[str, str], Conversation] = {}
            for channel, group in _by_channel(live):
                found = await people.by_identities(channel, [i.sender.external_id for i in group])
                known_people.update(((channel, key), person) for key, person in found.items())
                threads = await conversations.by_threads(channel, [i.thread_key for i in group])
                known_threads.update(((channel, key), c) for key, c in threads.items())
            state = _Round(session, now, known_people, known_threads, StagedReplies(session))
            await self._first_timers(state, live)
            handled: list[_Handled | None] = []
            tickets = Tickets(session)
            left = len(live)
            for inbound, new in zip(inbounds, fresh, strict=True):
                if not new:
                    handled.append(None)
                    continue
                tickets.reserve_numbers(left)  # at most a ticket per message left
                handled.append(await self._turn(state, inbound))
                left -= 1
            if routed is not None:
                routed()  # from here on the round waits on the database: the next may begin
            written = await state.replies.write(
                now=now, claim=self.outbox.claim_on_insert if self.outbox is not None else None
            )
            settle = [
                {
                    "channel": h.inbound.channel,
                    "external_ids": [h.inbound.external_id, *h.inbound.alt_ids],
                    "status": h.settle[0],
                    "reason": h.settle[1],
                    "message_id": h.message.id,
                }
                for h in handled
                if h is not None and h.settle is not None
            ]
            await Receipts(session).settle_many(settle)
            await KnowledgeFeedback(session).add_counts(state.feedback, shard=shard)
        results: list[HandleResult] = []
        events: list[ConversationEvent] = []
        for h in handled:
            if h is None:
                results.append(HandleResult(duplicate=True))
                continue
            replies = [written[position] for position in h.replies]
            results.append(
                HandleResult(
                    duplicate=False,
                    conversation_id=h.conversation.id,
                    message_id=h.message.id,
                    outbox_ids=tuple(
                        [row.id for row in h.outbox_rows] + [w.outbox_id for w in replies]
                    ),
                    kept_reason=h.kept_reason,
                    route=h.route,
                )
            )
            events.append(
                ConversationEvent(
                    "message",
                    h.conversation.id,
                    {"message_id": h.message.id, "direction": "in", "state": h.state},
                )
            )
            events.extend(
                ConversationEvent(
                    "message", h.conversation.id, {"message_id": w.message.id, "direction": "out"}
                )
                for w in replies
            )
            events.extend(h.after_commit)
        handed = [
            Handed(
                row_id=w.outbox_id,
                channel=w.channel,
                payload=w.payload,
                conversation_id=w.conversation_id,
                claimed_until=w.claim["claimed_until"],
                started=w.claim["send_started_at"] is not None,
            )
            for w in written
            if w.claim is not None
        ]
        return results, events, handed

    async def _turn(self, state: _Round, inbound: Inbound) -> _Handled:
        """One message of a round, after its receipt was found new."""
        session, now = state.session, state.now
        person, new_person = await self._resolve_person(state, inbound)
        conversation = await self._find_conversation(state, inbound, person)
        message = Conversations.new_message(
            conversation,
            direction="in",
            author_kind="person",
            author_id=person.id,
            text=inbound.text,
            external_id=inbound.external_id,
            kind=inbound.kind,
            now=now,
            meta={k: v for k, v in inbound.meta.items() if _jsonable(v)},
        )
        if inbound.kind != "message":
            reason = str(inbound.meta.get("reason") or f"{inbound.kind}: stored, not answered")
            state.replies.stage_message(conversation, message)
            await self._handle_machine_mail(session, inbound, conversation, now)
            return _Handled(
                inbound,
                conversation,
                message,
                route="kept",
                state=conversation.state,
                kept_reason=reason,
                settle=("kept", reason),
            )
        if conversation.state in AGENT_STATES:
            # the surfaces name the message by its id: it is inserted now, after what
            # this round staged so far
            state.replies.stage_message(conversation, message)
            await state.replies.flush()
            return _Handled(
                inbound,
                conversation,
                message,
                route="relayed",
                state=conversation.state,
                outbox_rows=await self._relay(session, conversation, person, message, now),
                settle=("handled", "relayed to agent"),
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
        for article_id, outcome in turn.feedback:
            counts = state.feedback.setdefault(article_id, {})
            counts[outcome] = counts.get(outcome, 0) + 1
        replies = await self._guard_loops(state, turn, new_person=new_person)
        handled = _Handled(
            inbound,
            conversation,
            message,
            route=turn.route,
            state=conversation.state,
            after_commit=[e for e in turn.after_commit if isinstance(e, ConversationEvent)],
            # the receipt is already "handled"; only aliases need the message id, so a
            # reply that names this message by an alias can find its conversation
            settle=("handled", None) if inbound.alt_ids else None,
        )
        if turn.escalation is not None:
            # the agents' card shows the transcript: this message must be in it
            state.replies.stage_message(conversation, message)
            await state.replies.flush()
            for surface in self.surfaces:
                for outbound in await surface.escalated(
                    session, conversation, person, turn.escalation
                ):
                    handled.outbox_rows.append(
                        await Outbox(session).enqueue(
                            channel=outbound.channel,
                            payload=outbound.to_json(),
                            now=now,
                            conversation_id=conversation.id,
                        )
                    )
        handled.replies = state.replies.stage(
            conversation,
            replies,
            now=now,
            after=None if turn.escalation is not None else message,
        )
        return handled

    async def _first_timers(self, state: _Round, inbounds: list[Inbound]) -> None:
        """People, identities and conversations for the senders this round sees for the
        first time (no identity yet): three statements for the whole round, not three
        for each (a fetch of mail from new senders, a wave of new web chat visitors)."""
        first = [i for i in inbounds if (i.channel, i.sender.external_id) not in state.people]
        if not first:
            return
        people = People(state.session)
        emails = [_verified_email(i) for i in first]
        opened = await people.open_many(
            [(email, i.sender.display_name) for email, i in zip(emails, first, strict=True)],
            now=state.now,
        )
        owners = await people.link_identities(
            [
                {
                    "person_id": person.id,
                    "channel": inbound.channel,
                    "external_id": inbound.sender.external_id,
                    "display_name": inbound.sender.display_name,
                    "email": email,
                    "verified": email is not None,
                }
                for inbound, email, (person, _) in zip(first, emails, opened, strict=True)
            ],
            now=state.now,
        )
        threads: list[dict[str, Any]] = []
        for inbound, (person, created) in zip(first, opened, strict=True):
            owner = owners[(inbound.channel, inbound.sender.external_id)]
            if owner != person.id:  # lost a race with a concurrent first message
                winner = await people.get(owner)
                assert winner is not None
                person, created = winner, False
            state.people[(inbound.channel, inbound.sender.external_id)] = person
            if created:
                state.created.add(person.id)
                # nothing earlier can be a new person's: their thread is opened now
                if (inbound.channel, inbound.thread_key) not in state.threads:
                    threads.append(
                        {
                            "person_id": person.id,
                            "channel": inbound.channel,
                            "thread_key": inbound.thread_key,
                            "reply_to": dict(inbound.reply_to),
                        }
                    )
        if threads:
            opened_threads = await Conversations(state.session).open_many(threads, now=state.now)
            state.threads.update(opened_threads)
            state.opened.update(opened_threads)

    async def _resolve_person(self, state: _Round, inbound: Inbound) -> tuple[Person, bool]:
        """The sender's person (known, or made by :meth:`_first_timers`), and whether this
        transaction created it."""
        person = state.people[(inbound.channel, inbound.sender.external_id)]
        if person.id in state.created:
            return person, True
        sender = inbound.sender
        verified_email = _verified_email(inbound)
        if (
            verified_email
            and person.email is None
            and await People(state.session).by_email(verified_email) is None
        ):
            person.email = verified_email
        if sender.display_name and not person.display_name:
            person.display_name = sender.display_name
        return person, False

    async def _find_conversation(
        self, state: _Round, inbound: Inbound, person: Person
    ) -> Conversation:
        conversations = Conversations(state.session)
        conversation = None
        key = (inbound.channel, inbound.thread_key)
        if person.id in state.created:  # no earlier conversation or ticket can be theirs
            conversation = state.threads.get(key)
        elif inbound.thread_key.startswith("conversation:"):
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
            conversation = state.threads.get(key)
        if conversation is None and inbound.references and person.id not in state.created:
            conversation = await conversations.by_reference(
                inbound.channel, inbound.references, person.id
            )
        if conversation is None and inbound.ticket_hint and person.id not in state.created:
            ticket = await Tickets(state.session).by_number(inbound.ticket_hint)
            if ticket is not None and ticket.requester_id == person.id and ticket.conversation_id:
                conversation = await conversations.get(ticket.conversation_id)
        if conversation is None:
            conversation, _ = await conversations.find_or_open(
                channel=inbound.channel,
                thread_key=inbound.thread_key,
                person_id=person.id,
                reply_to=dict(inbound.reply_to),
                now=state.now,
            )
            state.threads[key] = conversation
        elif inbound.reply_to and key not in state.opened:
            conversation.reply_to = dict(inbound.reply_to)
        return conversation

    async def _relay(
        self,
        session: AsyncSession,
        conversation: Conversation,
        person: Person,
        message: MessageRow,
        now: datetime,
    ) -> list[OutboxRow]:
        rows: list[OutboxRow] = []
        for surface in self.surfaces:
            for outbound in await surface.relay(session, conversation, person, message):
                rows.append(
                    await Outbox(session).enqueue(
                        channel=outbound.channel,
                        payload=outbound.to_json(),
                        now=now,
                        conversation_id=conversation.id,
                    )
                )
        return rows

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

    async def _guard_loops(self, state: _Round, turn: Turn, *, new_person: bool) -> list[Reply]:
        """Cap automatic replies per person on loop-prone channels (R19)."""
        if not turn.replies or turn.conversation.channel not in self.loop_guard_channels:
            return turn.replies
        since = turn.now - timedelta(hours=1)
        if new_person:
            sent = 0  # a person this transaction created has had no replies yet
        else:
            if turn.person.id in state.replies.people:
                await state.replies.flush()  # this round's replies to them count too
            sent = await Conversations(state.session).bot_replies_to_person_since(
                turn.person.id, since
            )
        if sent + len(turn.replies) <= self.auto_reply_cap_per_hour:
            return turn.replies
        logger.warning("inbound.loop_capped person=%s", turn.person.id)
        alerts = Alerts(state.session)
        # one alert per person and hour, however many of their conversations loop
        recent = await alerts.recent(kind="mail_loop", since=since, limit=500)
        if not any((a.detail or {}).get("person_id") == turn.person.id for a in recent):
            await alerts.raise_alert(
                "mail_loop",
                f"Automatic replies to person {turn.person.id} capped at "
                f"{self.auto_reply_cap_per_hour}/hour: a mail loop is likely.",
                now=turn.now,
                conversation_id=turn.conversation.id,
                detail={"person_id": turn.person.id},
            )
        return []


def _keys(inbound: Inbound) -> list[tuple[str, str, str]]:
    """What two messages in flight at once must not share: the thread, the sender and the
    receipt ids."""
    return [
        ("thread", inbound.channel, inbound.thread_key),
        ("sender", inbound.channel, inbound.sender.external_id),
        ("receipt", inbound.channel, inbound.external_id),
        *(("receipt", inbound.channel, alt) for alt in inbound.alt_ids),
    ]


def _rounds(
    items: list[_Queued], busy: AbstractSet[tuple[str, str, str]] = frozenset()
) -> list[list[_Queued]]:
    """Split queued messages into rounds: a message goes in the round after the last one
    that holds a message of its thread, of its sender or with one of its receipt ids. A
    message with a ``busy`` key (one of a round in flight) goes in the second round at the
    earliest, so the first may be empty."""
    rounds: list[list[_Queued]] = [[]]
    last: dict[tuple[str, str, str], int] = dict.fromkeys(busy, 0)
    for item in items:
        keys = _keys(item.inbound)
        index = max((last[key] + 1 for key in keys if key in last), default=0)
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(item)
        for key in keys:
            last[key] = index
    return rounds


def _by_channel(inbounds: Iterable[Inbound]) -> list[tuple[str, list[Inbound]]]:
    groups: dict[str, list[Inbound]] = {}
    for inbound in inbounds:
        groups.setdefault(inbound.channel, []).append(inbound)
    return list(groups.items())


def _failure(exc: Exception) -> Exception:
    """What the caller of ``handle`` is told: a database that is unreachable, busy or
    dropped the connection (R47) is transient, so a poller retries later instead of
    counting it against the message (and quarantining it)."""
    if isinstance(exc, DBAPIError) and (
        isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated
    ):
        failure = TransientError(f"database unavailable: {type(exc).__name__}")
        failure.__cause__ = exc
        return failure
    return exc


def _verified_email(inbound: Inbound) -> str | None:
    sender = inbound.sender
    return sender.email.lower() if sender.email and sender.email_verified else None


def _jsonable(value: object) -> bool:
    return isinstance(value, str | int | float | bool | type(None) | list | dict | tuple)
