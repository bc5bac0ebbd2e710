"""The outbox dispatcher: delivers committed outbox rows through the channel registry.

Every row goes ``pending`` → ``sending`` (claimed under a lease) → ``sent`` | ``failed``.
Just before a batch goes to the network its rows are stamped ``send_started_at`` in their
own commit: that stamp opens the one ambiguous window (sent by the platform, not yet
marked by us). A row whose lease ran out is recovered by whoever sweeps next:

- never started → back to ``pending`` (nothing was sent);
- started, and the channel can reconcile (Slack looks for its outbox id in the
  channel's history) → ``sent`` when found, else ``pending``;
- started, channel cannot reconcile → ``ambiguous``: not resent, raised as an alert so an
  agent decides. This is the documented ambiguous window.

Rows the conversation manager writes for a turn's replies skip the claim: they are
inserted already claimed by this node (:meth:`OutboxDispatcher.claim_on_insert`) and
handed over in memory after their commit (:meth:`OutboxDispatcher.hand`), so the reply
goes out without a claiming transaction. For a channel that can reconcile they are also
inserted stamped: its ambiguous window opens at the commit, and a crash before the send
is resolved by reconciling (not found: sent once after the lease). Every other row is
stamped just before its send, as a claimed one is.

While serving, a batch is settled in the background as the next one is sent (one
settle at a time, in order); :meth:`OutboxDispatcher.run_once` settles before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, update

from bot.clock import Clock
from bot.errors import ConfigError, PermanentError, RateLimited, TransientError
from bot.events import ConversationEvent, EventBus
from bot.ports import Channel, ChannelRegistry, Reconciling, SendsInBatches
from bot.types import Delivery, Outbound
from storage.db import Database
from storage.models import OutboxRow
from storage.repositories import Alerts, Outbox

logger = logging.getLogger(__name__)

FaultHook = Callable[[str], None]

# handed rows given back unsent (the dispatcher stopped before sending them)
_RELEASE = (
    update(OutboxRow)
    .where(OutboxRow.id.in_(bindparam("ids", expanding=True)), OutboxRow.status == "sending")
    .values(status="pending", claimed_until=None, send_started_at=None)
    .execution_options(synchronize_session=False)
)
# the stamp that opens a batch's ambiguous window, for rows still in our claim
_STAMP = (
    update(OutboxRow)
    .where(OutboxRow.id.in_(bindparam("ids", expanding=True)), OutboxRow.status == "sending")
    .values(send_started_at=bindparam("started"), claimed_until=bindparam("until"))
    .execution_options(synchronize_session=False)
)


@dataclass(frozen=True, slots=True)
class OutboxPolicy:
    """How hard the dispatcher tries."""

    max_attempts: int = 8
    base_backoff: float = 2.0
    max_backoff: float = 600.0
    lease_seconds: float = 60.0
    batch_size: int = 200
    poll_seconds: float = 1.0
    send_timeout: float = 30.0


class _TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.capacity = burst
        self.tokens = burst
        self.updated = asyncio.get_running_loop().time()

    async def take(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


@dataclass(frozen=True, slots=True)
class Handed:
    """A row inserted with :meth:`OutboxDispatcher.claim_on_insert`, handed over after
    its commit: what the dispatcher would otherwise have read back when claiming it."""

    row_id: int
    channel: str
    payload: dict[str, Any]
    conversation_id: int | None
    claimed_until: datetime
    started: bool


@dataclass(slots=True)
class _Outcome:
    row_id: int
    delivery: Delivery | None = None
    error: BaseException | None = None


class OutboxDispatcher:
    """Claims due outbox rows and sends them, with retry, backoff and rate limits."""

    def __init__(
        self,
        database: Database,
        registry: ChannelRegistry,
        clock: Clock,
        *,
        policy: OutboxPolicy | None = None,
        events: EventBus | None = None,
        rng: random.Random | None = None,
        fault_hook: FaultHook | None = None,
    ) -> None:
        self.db = database
        self.registry = registry
        self.clock = clock
        self.policy = policy or OutboxPolicy()
        self.events = events
        self._rng = rng or random.Random()
        self._fault = fault_hook
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._buckets: dict[str, _TokenBucket] = {}
        self._paused_until: dict[str, datetime] = {}
        self.idle = asyncio.Event()
        self._next_recovery: float | None = None
        self._handed: deque[Handed] = deque()
        self._reconciles: dict[str, bool] = {}
        self._stopping = False
        self._settling: asyncio.Task[None] | None = None

    # lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._serve(), name="outbox.dispatcher")
            self._task.add_done_callback(self._crashed)

    async def stop(self, *, grace: float = 10.0) -> None:
        """Let the batch in hand finish (a send cut off is left to its lease, and on a
        channel that cannot reconcile, to an agent), wait at most ``grace`` seconds for
        it, then stop; the rows handed over and not yet sent are given back."""
        task = self._task
        if task is not None:
            self._stopping = True
            self._wake.set()
            done, _ = await asyncio.wait({task}, timeout=grace)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._task = None
            self._stopping = False
        await self._release_handed()

    async def _release_handed(self) -> None:
        """Give back the handed rows not sent yet, so that any node may claim them now
        instead of after their lease (a stop between a commit and its send)."""
        ids = [item.row_id for item in self._handed]
        self._handed.clear()
        if not ids:
            return
        try:
            async with self.db.transaction() as session:
                await session.execute(_RELEASE, {"ids": ids})
        except Exception:  # their lease runs out and whoever sweeps next takes them
            logger.exception("outbox.release.failed rows=%d", len(ids))

    def _crashed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("outbox.dispatcher.crashed", exc_info=task.exception())

    def wake(self) -> None:
        """Called after a commit that enqueued rows: deliver now, not at the next poll."""
        self._wake.set()

    def claim_on_insert(self, channel: str, now: datetime) -> dict[str, Any] | None:
        """Column values for a new row this node sends itself once the inserting
        transaction commits (then :meth:`hand` it over): claimed under a lease, and
        stamped as started when the channel can reconcile (see the module docstring).
        None while this dispatcher is not serving: the row is left for any node to claim.
        """
        if self._task is None or self._task.done() or self._stopping:
            return None
        started = self._reconciles.get(channel)
        if started is None:  # a Protocol isinstance is slow: asked once per channel
            started = self._reconciles[channel] = isinstance(
                self.registry.get(channel), Reconciling
            )
        return {
            "status": "sending",
            "claimed_until": now + timedelta(seconds=self.policy.lease_seconds),
            "send_started_at": now if started else None,
        }

    def hand(self, rows: Sequence[Handed]) -> None:
        """Rows inserted with :meth:`claim_on_insert` whose transaction committed: sent in
        the next sweep, before anything is claimed."""
        if rows:
            self._handed.extend(rows)
            self._wake.set()

    async def _serve(self) -> None:
        try:
            while not self._stopping:
                self._wake.clear()
                try:
                    processed = await self._sweep()  # its batch is settled meanwhile
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("outbox.sweep.failed")
                    processed = 0
                # a full batch may have left due rows behind, and a wake during the sweep
                # means new rows; after a partial batch nothing was due at the claim, so
                # claiming again at once would be an empty transaction per batch
                if self._stopping:
                    return
                if processed >= self.policy.batch_size or self._wake.is_set() or self._handed:
                    continue
                if self._settling is not None and not await self._settled_unless_woken():
                    continue  # new rows came while the last batch was being settled
                self.idle.set()
                with contextlib.suppress(TimeoutError):  # the poll: look again
                    await asyncio.wait_for(self._wake.wait(), timeout=self.policy.poll_seconds)
                self.idle.clear()
        finally:
            await asyncio.shield(self._settled())  # a stop lets the last batch settle

    # one sweep ---------------------------------------------------------------------

    async def run_once(self) -> int:
        """Recover stale claims, then deliver one batch (the rows handed over, else the
        due rows claimed) and settle it; rows processed."""
        processed = await self._sweep()
        await self._settled(raising=True)
        return processed

    async def _sweep(self) -> int:
        """:meth:`run_once`, but the batch's settling (its "sent" UPDATE, retries and
        alerts) goes on in the background after the one before it, so that the serving
        loop sends the next batch meanwhile."""
        now = self.clock.now()
        loop_now = asyncio.get_running_loop().time()
        if self._next_recovery is None or loop_now >= self._next_recovery:
            # a lease only runs out after lease_seconds: looking more often is wasted work
            await self.recover_stale(now)
            self._next_recovery = loop_now + min(5.0, self.policy.lease_seconds / 4)
        lease = timedelta(seconds=self.policy.lease_seconds)
        handed = self._take_handed(now)
        if handed:
            claimed = [(h.row_id, h.channel, 0, h.payload, h.conversation_id) for h in handed]
            unstamped = [h.row_id for h in handed if not h.started]
        else:
            paused = [kind for kind, until in self._paused_until.items() if until > now]
            async with self.db.transaction() as session:
                rows = await Outbox(session).claim_due(
                    now, lease=lease, limit=self.policy.batch_size, skip_channels=paused
                )
                claimed = [
                    (row.id, row.channel, row.attempts, dict(row.payload), row.conversation_id)
                    for row in rows
                ]
            unstamped = [row_id for row_id, *_ in claimed]
        if not claimed:
            return 0
        self._fault_point("claimed")
        if unstamped:
            async with self.db.transaction() as session:
                started = self.clock.now()
                await session.execute(
                    _STAMP,
                    {"ids": unstamped, "started": started, "until": started + lease},
                )
        self._fault_point("before_send")
        by_channel: dict[str, list[tuple[int, int, Outbound]]] = {}
        for row_id, channel, attempts, payload, _ in claimed:
            outbound = Outbound.from_json(payload, outbox_id=row_id)
            by_channel.setdefault(channel, []).append((row_id, attempts, outbound))
        results = await asyncio.gather(
            *(self._send_channel(kind, items) for kind, items in by_channel.items())
        )
        outcomes = [outcome for group in results for outcome in group]
        self._fault_point("after_send")
        await self._settled()  # one batch settles at a time, in the order they went out
        self._settling = asyncio.create_task(
            self._settle(
                outcomes,
                {row_id: attempts for row_id, _, attempts, _, _ in claimed},
                {row_id: conversation for row_id, _, _, _, conversation in claimed},
            ),
            name="outbox.settle",
        )
        return len(claimed)

    async def _settled_unless_woken(self) -> bool:
        """Wait for the batch being settled, unless new rows come first (then False)."""
        assert self._settling is not None
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({self._settling, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
        if self._wake.is_set() or self._handed:
            return False
        await self._settled()
        return True

    async def _settled(self, *, raising: bool = False) -> None:
        """Wait for the batch being settled, if any. A failed settle is logged (or raised):
        its rows stay claimed, and recovery settles them once their lease runs out."""
        task, self._settling = self._settling, None
        if task is None:
            return
        try:
            await task
        except Exception:
            if raising:
                raise
            logger.exception("outbox.settle.failed")

    def _take_handed(self, now: datetime) -> list[Handed]:
        """Up to a batch of handed rows whose claim still holds (a row left waiting past
        its lease is another sweep's to recover, not ours to send)."""
        taken: list[Handed] = []
        while self._handed and len(taken) < self.policy.batch_size:
            item = self._handed.popleft()
            if item.claimed_until > now:
                taken.append(item)
            else:
                logger.warning("outbox.handed.expired outbox_id=%s", item.row_id)
        return taken

    async def _send_channel(
        self, kind: str, items: list[tuple[int, int, Outbound]]
    ) -> list[_Outcome]:
        """Send one channel's share of a batch.

        A channel that declares ``send_concurrency`` > 1 (the email channel's SMTP
        connection pool) gets that many sends in flight; one conversation's replies
        always go one after the other, in the order they were queued.
        """
        channel = self.registry.get(kind)
        if (
            isinstance(channel, SendsInBatches)
            and len(items) > 1
            and not getattr(channel, "rate_per_second", None)
        ):
            return await self._send_batch(kind, channel, items)
        concurrency = max(1, int(getattr(channel, "send_concurrency", 1) or 1))
        if concurrency == 1 or len(items) == 1:
            return [await self._send_one(kind, channel, item) for item in items]
        lanes: dict[int | None, list[tuple[int, int, Outbound]]] = {}
        for item in items:
            lanes.setdefault(item[2].conversation_id, []).append(item)
        gate = asyncio.Semaphore(concurrency)
        outcomes: dict[int, _Outcome] = {}

        async def lane(queue: list[tuple[int, int, Outbound]]) -> None:
            for item in queue:
                async with gate:
                    outcomes[item[0]] = await self._send_one(kind, channel, item)

        await asyncio.gather(*(lane(queue) for queue in lanes.values()))
        return [outcomes[row_id] for row_id, _, _ in items]

    async def _send_batch(
        self, kind: str, channel: SendsInBatches, items: list[tuple[int, int, Outbound]]
    ) -> list[_Outcome]:
        """One ``send_batch`` call for a channel's share of a batch, its results and
        errors read as :meth:`_send_one` reads a single send's."""
        paused = self._paused_until.get(kind)
        if paused is not None and paused > self.clock.now():
            wait = (paused - self.clock.now()).total_seconds()
            return [
                _Outcome(row_id, error=RateLimited("channel paused", retry_after=wait))
                for row_id, _, _ in items
            ]
        try:
            async with asyncio.timeout(self.policy.send_timeout):
                results = await channel.send_batch([outbound for _, _, outbound in items])
            if len(results) != len(items):
                raise TransientError(f"{len(results)} results for {len(items)} messages")
        except Exception as exc:  # the whole batch failed: read (and log) it once
            error = self._read_error(kind, items[0][0], exc)
            return [_Outcome(row_id, error=error) for row_id, _, _ in items]
        outcomes = []
        for (row_id, _, _), result in zip(items, results, strict=True):
            if isinstance(result, Exception):
                outcomes.append(_Outcome(row_id, error=self._read_error(kind, row_id, result)))
            else:
                outcomes.append(_Outcome(row_id, delivery=result))
        return outcomes

    def _read_error(self, kind: str, row_id: int, exc: Exception) -> Exception:
        """What a failed send means for its row (a rate limit also pauses the channel)."""
        if isinstance(exc, RateLimited):
            wait = exc.retry_after if exc.retry_after is not None else 1.0
            self._paused_until[kind] = self.clock.now() + timedelta(seconds=wait)
            logger.warning("outbox.rate_limited channel=%s retry_after=%.1f", kind, wait)
            return exc
        if isinstance(exc, TimeoutError):
            return TransientError("send timed out")
        if isinstance(exc, TransientError | PermanentError | ConfigError):
            return exc
        logger.error("outbox.send.crashed channel=%s outbox_id=%s", kind, row_id, exc_info=exc)
        return TransientError(repr(exc))

    async def _send_one(
        self, kind: str, channel: Channel | None, item: tuple[int, int, Outbound]
    ) -> _Outcome:
        row_id, _attempts, outbound = item
        if channel is None:
            return _Outcome(row_id, error=PermanentError(f"no channel {kind!r}"))
        paused = self._paused_until.get(kind)
        if paused is not None and paused > self.clock.now():
            return _Outcome(
                row_id,
                error=RateLimited(
                    "channel paused",
                    retry_after=(paused - self.clock.now()).total_seconds(),
                ),
            )
        bucket = self._bucket(kind, channel)
        if bucket is not None:
            await bucket.take()
        try:
            delivery = await asyncio.wait_for(
                channel.send(outbound),
                timeout=self.policy.send_timeout,
            )
            return _Outcome(row_id, delivery=delivery)
        except Exception as exc:
            return _Outcome(row_id, error=self._read_error(kind, row_id, exc))

    def _bucket(self, kind: str, channel: object) -> _TokenBucket | None:
        rate = getattr(channel, "rate_per_second", None)
        if not rate:
            return None
        bucket = self._buckets.get(kind)
        if bucket is None:
            burst = float(getattr(channel, "rate_burst", max(1.0, rate)))
            bucket = self._buckets[kind] = _TokenBucket(float(rate), burst)
        return bucket

    async def _settle(
        self,
        outcomes: list[_Outcome],
        attempts: dict[int, int],
        conversations: dict[int, int | None],
    ) -> None:
        now = self.clock.now()
        failed: list[tuple[OutboxRow, str]] = []
        sent = [o for o in outcomes if o.delivery is not None]
        others = [o for o in outcomes if o.delivery is None]
        # all sent, the common case: one UPDATE, which needs no transaction around it
        unit = self.db.transaction() if others else self.db.single_statement()
        async with unit as session:
            if sent:
                # the common case in one round trip, and only for rows still in our claim
                # (a recovered row is left alone)
                await Outbox(session).mark_sent(
                    [
                        (
                            o.row_id,
                            o.delivery.platform_id if o.delivery else None,
                            attempts[o.row_id] + 1,
                        )
                        for o in sent
                    ],
                    now=now,
                )
            for outcome in others:
                row = await session.get(OutboxRow, outcome.row_id)
                if row is None or row.status != "sending":
                    continue
                row.claimed_until = None
                error = outcome.error
                assert error is not None
                row.send_started_at = None
                row.last_error = f"{type(error).__name__}: {error}"[:2000]
                if isinstance(error, RateLimited):
                    # not the row's fault: no attempt is spent
                    row.status = "pending"
                    row.next_attempt_at = now + timedelta(seconds=error.retry_after or 1.0)
                    continue
                row.attempts = attempts[row.id] + 1
                if isinstance(error, TransientError) and row.attempts < self.policy.max_attempts:
                    row.status = "pending"
                    row.next_attempt_at = now + timedelta(
                        seconds=self.backoff(row.attempts, error.retry_after)
                    )
                    logger.info(
                        "outbox.retry outbox_id=%s attempts=%s error=%s",
                        row.id,
                        row.attempts,
                        type(error).__name__,
                    )
                    continue
                row.status = "failed"
                failed.append((row, row.last_error))
            for row, reason in failed:
                logger.error("outbox.failed outbox_id=%s channel=%s", row.id, row.channel)
                await Alerts(session).raise_alert(
                    "delivery_failed",
                    f"A {row.channel} message could not be delivered: {reason}",
                    now=now,
                    conversation_id=row.conversation_id,
                    detail={"outbox_id": row.id},
                )
        if self.events is not None:
            for outcome in sent:
                self.events.publish(
                    ConversationEvent(
                        "delivered",
                        conversations.get(outcome.row_id),
                        {
                            "outbox_id": outcome.row_id,
                            "platform_id": outcome.delivery.platform_id
                            if outcome.delivery
                            else None,
                        },
                    )
                )
            for row, _ in failed:
                self.events.publish(
                    ConversationEvent("delivery_failed", row.conversation_id, {"outbox_id": row.id})
                )

    def backoff(self, attempts: int, retry_after: float | None = None) -> float:
        """Exponential backoff with full jitter, never shorter than the platform asked."""
        ceiling = min(self.policy.max_backoff, self.policy.base_backoff * (2 ** (attempts - 1)))
        delay = self._rng.uniform(ceiling / 2, ceiling)
        return max(delay, retry_after or 0.0)

    async def recover_stale(self, now: datetime) -> int:
        """Settle rows whose claimer died; see the module docstring for the rules."""
        async with self.db.transaction() as session:
            stale = await Outbox(session).stale_claims(now)
            snapshot = [
                (row.id, row.channel, row.send_started_at is not None, dict(row.payload))
                for row in stale
            ]
            for row in stale:
                if row.send_started_at is None:
                    row.status = "pending"
                    row.claimed_until = None
        recovered = 0
        for row_id, kind, started, payload in snapshot:
            if not started:
                recovered += 1
                continue
            channel = self.registry.get(kind)
            found: Delivery | None = None
            can_reconcile = isinstance(channel, Reconciling)
            if can_reconcile:
                try:
                    found = await channel.reconcile(  # type: ignore[union-attr]
                        Outbound.from_json(payload, outbox_id=row_id)
                    )
                except Exception:
                    logger.exception("outbox.reconcile.failed outbox_id=%s", row_id)
                    continue
            async with self.db.transaction() as session:
                current = await session.get(OutboxRow, row_id)
                if current is None or current.status != "sending":
                    continue
                row = current
                row.claimed_until = None
                if found is not None:
                    row.status = "sent"
                    row.platform_id = found.platform_id
                    row.sent_at = now
                elif can_reconcile:
                    row.status = "pending"
                    row.send_started_at = None
                    row.next_attempt_at = now
                else:
                    row.status = "ambiguous"
                    row.last_error = "process stopped while sending; delivery unknown"
                    await Alerts(session).raise_alert(
                        "delivery_ambiguous",
                        f"A {kind} message may or may not have been delivered (outbox {row_id}).",
                        now=now,
                        conversation_id=row.conversation_id,
                        detail={"outbox_id": row_id},
                    )
                    logger.warning("outbox.ambiguous outbox_id=%s channel=%s", row_id, kind)
            recovered += 1
        return recovered

    async def drain(self, *, timeout: float = 10.0) -> None:
        """Deliver until nothing is due (tests and ``deskbot chat``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await self.run_once():
            if loop.time() > deadline:
                raise TimeoutError("outbox did not drain")

    def _fault_point(self, name: str) -> None:
        if self._fault is not None:
            self._fault(name)
