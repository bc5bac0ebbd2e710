"""PostgreSQL LISTEN/NOTIFY on one channel, for processes that share one database.

One dedicated asyncpg connection per process (outside the SQLAlchemy pool) both listens
on the channel and sends this process's notifications, in the order they were queued, in
batches of one ``SELECT pg_notify(...) FROM unnest(...)`` round trip each.

Notifications are not durable: whatever is sent while a listener is disconnected is
gone for that listener. So the connection is watched (asyncpg's termination callback,
and a ``SELECT 1`` when it has been idle for ``ping_seconds``, which catches a half-open
socket), re-opened with capped, jittered backoff, and every reconnect calls
``on_reconnected`` so the caller can resync from the database. Payloads must stay under
PostgreSQL's limit of 8000 bytes: send ids, read the rest from the database.

This module knows nothing of what the payloads mean (``storage`` imports nothing of
``bot``); ``bot/cluster.py`` gives them their meaning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)

NOTIFY_PAYLOAD_LIMIT = 7999
"""The longest payload PostgreSQL accepts, in bytes (it refuses 8000 and more)."""

# one round trip, one transaction; unnest yields (and pg_notify is called) in array order,
# and PostgreSQL delivers one transaction's notifications in the order they were made
_NOTIFY_BATCH = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p"


class NotifyUnavailable(Exception):
    """A notification could not be handed to PostgreSQL; it was not sent (or, when the
    connection broke mid-statement, perhaps sent: the caller's retry may duplicate it)."""


@dataclass(slots=True)
class _Queued:
    payload: str
    done: asyncio.Future[None] | None = None


def asyncpg_dsn(url: str) -> str:
    """The plain libpq-style DSN of a SQLAlchemy ``postgresql+asyncpg://`` URL."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"LISTEN/NOTIFY needs PostgreSQL, not {parsed.get_backend_name()!r}")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresNotifications:
    """LISTEN and NOTIFY on ``channel`` over one self-healing connection.

    ``on_payload`` is called (in the event loop, synchronously) for every notification on
    the channel, this process's own included; ``on_reconnected`` after the connection was
    lost and is back, since notifications sent meanwhile were missed.
    """

    def __init__(
        self,
        url: str,
        channel: str,
        *,
        on_payload: Callable[[str], None],
        on_reconnected: Callable[[], None],
        min_backoff: float = 0.2,
        max_backoff: float = 10.0,
        ping_seconds: float = 10.0,
        timeout: float = 10.0,
        max_queued: int = 10_000,
        batch_size: int = 200,
        rng: random.Random | None = None,
    ) -> None:
        self._dsn = asyncpg_dsn(url)
        self.channel = channel
        self._on_payload = on_payload
        self._on_reconnected = on_reconnected
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._ping_seconds = ping_seconds
        self._timeout = timeout
        self._max_queued = max_queued
        self._batch_size = batch_size
        self._rng = rng or random.Random()
        self._queue: deque[_Queued] = deque()
        self._work = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._first_connect: asyncio.Future[None] | None = None
        self._dropped = 0
        self.listening = asyncio.Event()
        """Set while the connection is up and listening."""
        self.listener_pid: int | None = None
        """The server process id of the current connection (for operators and tests)."""
        self.reconnects = 0

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and listen; raises when the first connection cannot be made."""
        if self._task is not None:
            return
        self._first_connect = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._supervise(), name=f"notify.{self.channel}")
        self._task.add_done_callback(self._crashed)
        try:
            await asyncio.wait_for(asyncio.shield(self._first_connect), self._timeout)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._queue:
            item = self._queue.popleft()
            if item.done is not None and not item.done.done():
                item.done.set_exception(NotifyUnavailable("stopped"))

    def _crashed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("notify.crashed channel=%s", self.channel, exc_info=task.exception())

    # sending -----------------------------------------------------------------------------

    def notify_soon(self, payload: str) -> None:
        """Queue a notification; sent in order, retried across reconnects. When the
        queue is full (PostgreSQL unreachable for long) it is dropped, and logged."""
        self._check(payload)
        if len(self._queue) >= self._max_queued:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                logger.warning("notify.dropped channel=%s count=%d", self.channel, self._dropped)
            return
        self._queue.append(_Queued(payload))
        self._work.set()

    async def notify(self, payload: str) -> None:
        """Send a notification and return once PostgreSQL has it (after everything queued
        before it). Raises :class:`NotifyUnavailable` at once while disconnected, so the
        caller can retry later instead of waiting for a reconnect."""
        self._check(payload)
        if self._task is None or not self.listening.is_set():
            raise NotifyUnavailable("not connected to PostgreSQL")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(payload, done))
        self._work.set()
        # a cancelled wait leaves a cancelled future, which the sender then skips
        await asyncio.wait_for(done, self._timeout)

    @staticmethod
    def _check(payload: str) -> None:
        size = len(payload.encode())
        if size > NOTIFY_PAYLOAD_LIMIT:
            raise ValueError(f"notification payload of {size} bytes exceeds 7999")

    # the connection ------------------------------------------------------------------------

    async def _supervise(self) -> None:
        failures = 0
        connected_before = False
        while True:
            connection: Any = None
            try:
                connection = await asyncpg.connect(self._dsn, timeout=self._timeout)
                lost = asyncio.Event()
                connection.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await connection.add_listener(self.channel, self._received)
                self.listener_pid = connection.get_server_pid()
                self.listening.set()
                failures = 0
                if connected_before:
                    self.reconnects += 1
                    logger.warning(
                        "notify.reconnected channel=%s pid=%s", self.channel, self.listener_pid
                    )
                    self._call(self._on_reconnected)
                else:
                    logger.info(
                        "notify.listening channel=%s pid=%s", self.channel, self.listener_pid
                    )
                connected_before = True
                if self._first_connect is not None and not self._first_connect.done():
                    self._first_connect.set_result(None)
                await self._serve(connection, lost)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if self._first_connect is not None and not self._first_connect.done():
                    self._first_connect.set_exception(exc)
                    return
                logger.warning(
                    "notify.connection_lost channel=%s failures=%d error=%s",
                    self.channel,
                    failures,
                    type(exc).__name__,
                )
            finally:
                self.listening.clear()
                self.listener_pid = None
                self._fail_waiting(keep_queued=True)
                if connection is not None:
                    connection.terminate()  # never blocks: the socket may be dead
            ceiling = min(self._max_backoff, self._min_backoff * 2 ** max(0, failures - 1))
            await asyncio.sleep(self._rng.uniform(ceiling / 2, ceiling))

    async def _serve(self, connection: Any, lost: asyncio.Event) -> None:
        """Send what is queued, ping when idle; return or raise when the link is gone."""
        while True:
            if lost.is_set() or connection.is_closed():
                raise ConnectionError("listen connection closed")
            if not self._queue:
                self._work.clear()
                waiter = asyncio.ensure_future(self._work.wait())
                closer = asyncio.ensure_future(lost.wait())
                try:
                    await asyncio.wait(
                        {waiter, closer},
                        timeout=self._ping_seconds,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    waiter.cancel()
                    closer.cancel()
                if lost.is_set():
                    continue
                if not self._queue:
                    await connection.fetchval("SELECT 1", timeout=self._timeout)
                    continue
            batch: list[_Queued] = []
            while self._queue and len(batch) < self._batch_size:
                item = self._queue.popleft()
                if item.done is not None and item.done.done():
                    continue  # its caller gave up waiting: never send it late
                batch.append(item)
            if not batch:
                continue
            try:
                await connection.execute(
                    _NOTIFY_BATCH,
                    self.channel,
                    [item.payload for item in batch],
                    timeout=self._timeout,
                )
            except BaseException:
                # fire-and-forget items go back to the front, in order, for the next
                # connection; a waiting caller is told now and retries on its own
                for item in reversed(batch):
                    if item.done is None:
                        self._queue.appendleft(item)
                    elif not item.done.done():
                        item.done.set_exception(NotifyUnavailable("connection lost while sending"))
                raise
            for item in batch:
                if item.done is not None and not item.done.done():
                    item.done.set_result(None)

    def _fail_waiting(self, *, keep_queued: bool) -> None:
        kept: deque[_Queued] = deque()
        for item in self._queue:
            if item.done is None:
                if keep_queued:
                    kept.append(item)
            elif not item.done.done():
                item.done.set_exception(NotifyUnavailable("not connected to PostgreSQL"))
        self._queue = kept

    def _received(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            self._on_payload(payload)
        except Exception:
            logger.exception("notify.handler_failed channel=%s", self.channel)

    def _call(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            logger.exception("notify.handler_failed channel=%s", self.channel)


__all__ = ["NOTIFY_PAYLOAD_LIMIT", "NotifyUnavailable", "PostgresNotifications", "asyncpg_dsn"]
