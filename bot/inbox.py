"""The durable inbox: accept an inbound message in one fast insert, handle it later.

Slack wants an ack within 3 s and will not redeliver after a 200 even when our handler
failed, so its adapter calls :meth:`Inbox.accept` (one insert, deduplicated on
(channel, external id)) and acks; the :class:`InboxWorker` hands each row to the
conversation manager, retrying with backoff when handling raises, and marking the row
failed (with an alert) after the last attempt. Handling is idempotent through the
manager's receipts, so a row handled twice after a crash still yields one reply.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import timedelta

from bot.clock import Clock
from bot.errors import TransientError
from bot.ports import InboundHandler
from bot.types import Inbound, inbound_from_json, inbound_to_json
from storage.db import Database
from storage.models import InboxRow
from storage.repositories import Alerts
from storage.repositories import Inbox as InboxRepository

logger = logging.getLogger(__name__)


class Inbox:
    """Accepts inbound messages durably; wakes the worker."""

    def __init__(self, database: Database, clock: Clock) -> None:
        self.db = database
        self.clock = clock
        self.wakeup = asyncio.Event()

    async def accept(self, inbound: Inbound) -> bool:
        async with self.db.transaction() as session:
            fresh = await InboxRepository(session).accept(
                channel=inbound.channel,
                external_id=inbound.external_id,
                payload=inbound_to_json(inbound),
                now=self.clock.now(),
            )
        self.wakeup.set()
        return fresh


class InboxWorker:
    """Hands accepted messages to the manager, with retry and a visible failed state."""

    def __init__(
        self,
        inbox: Inbox,
        handler: InboundHandler,
        *,
        max_attempts: int = 6,
        base_backoff: float = 1.0,
        max_backoff: float = 300.0,
        lease_seconds: float = 120.0,
        concurrency: int = 8,
        poll_seconds: float = 1.0,
    ) -> None:
        self.inbox = inbox
        self.handler = handler
        self.max_attempts = max_attempts
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.lease = timedelta(seconds=lease_seconds)
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._rng = random.Random()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._serve(), name="inbox.worker")

    async def stop(self, *, grace: float = 10.0) -> None:
        """Let the batch in hand finish (so no row waits out its lease), then stop."""
        if self._task is None:
            return
        self._stopping = True
        self.inbox.wakeup.set()
        done, _ = await asyncio.wait({self._task}, timeout=grace)
        if not done:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._task = None
        self._stopping = False

    async def _serve(self) -> None:
        while not self._stopping:
            self.inbox.wakeup.clear()
            try:
                processed = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("inbox.sweep.failed")
                processed = 0
            if processed or self._stopping:
                continue
            try:
                await asyncio.wait_for(self.inbox.wakeup.wait(), timeout=self.poll_seconds)
            except TimeoutError:
                pass

    async def run_once(self) -> int:
        db, clock = self.inbox.db, self.inbox.clock
        async with db.transaction() as session:
            rows = await InboxRepository(session).claim_due(
                clock.now(), lease=self.lease, limit=self.concurrency * 4
            )
            work = [(row.id, dict(row.payload), row.attempts) for row in rows]
        if not work:
            return 0
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one(row_id: int, payload: dict[str, object], attempts: int) -> None:
            async with semaphore:
                error: BaseException | None = None
                try:
                    await self.handler(inbound_from_json(payload))
                except Exception as exc:
                    logger.exception("inbox.handle.failed inbox_id=%s", row_id)
                    error = exc
                await self._settle(row_id, attempts, error)

        await asyncio.gather(*(one(*item) for item in work))
        return len(work)

    async def _settle(self, row_id: int, attempts: int, error: BaseException | None) -> None:
        db, clock = self.inbox.db, self.inbox.clock
        now = clock.now()
        async with db.transaction() as session:
            row = await session.get(InboxRow, row_id)
            if row is None:
                return
            row.claimed_until = None
            if error is None:
                row.status = "done"
                row.handled_at = now
                return
            row.attempts = attempts + 1
            row.last_error = f"{type(error).__name__}: {error}"[:2000]
            # a transient error (the database unreachable, a dropped connection) is not
            # the message's fault: it waits, however long, instead of being given up
            if row.attempts >= self.max_attempts and not isinstance(error, TransientError):
                row.status = "failed"
                await Alerts(session).raise_alert(
                    "inbound_failed",
                    f"A {row.channel} message could not be handled after {row.attempts} "
                    f"attempts: {row.last_error}",
                    now=now,
                    detail={"inbox_id": row.id, "external_id": row.external_id},
                )
                return
            row.status = "pending"
            delay = min(self.max_backoff, self.base_backoff * 2 ** min(row.attempts - 1, 30))
            row.next_attempt_at = now + timedelta(seconds=self._rng.uniform(delay / 2, delay))
