"""Locks held among all the nodes that share one database.

On PostgreSQL a lock is a session-level advisory lock taken on a connection of its own,
kept out of any transaction (autocommit), so it lasts exactly as long as that connection:
when the holder stops, crashes or its connection is cut (``pg_terminate_backend``, a
network failure), the server releases the lock and a waiting node takes it at its next
try. The holder learns of a lost connection at once from the driver, or from a periodic
``SELECT 1`` when the line goes half-open.

On SQLite there is one process (the database is a local file): the lock is held at once
and never lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.db import Database

logger = logging.getLogger(__name__)

_TRY_LOCK = text("SELECT pg_try_advisory_lock(:key)")
# the name a waiting node's log line shows for the holder, and keepalives so that the
# server notices a holder that vanished without closing its connection (a crashed
# machine, a cut network) within about half a minute, not the system's two hours,
# and releases its lock
_SESSION = text(
    "SELECT set_config('application_name', :label, false), "
    "set_config('tcp_keepalives_idle', '10', false), "
    "set_config('tcp_keepalives_interval', '5', false), "
    "set_config('tcp_keepalives_count', '3', false)"
)
_HOLDER = text(
    "SELECT a.pid, a.application_name, a.client_addr::text AS client_addr "
    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.classid = :classid AND l.objid = :objid "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def lock_key(name: str) -> int:
    """The signed 64-bit advisory lock key of a lock name (stable across processes)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _node_label() -> str:
    return f"deskbot {socket.gethostname()} pid {os.getpid()}"[:63]


class AdvisoryLocks:
    """Named locks among the nodes of one database; see :meth:`hold`."""

    def __init__(
        self,
        database: Database,
        *,
        retry_seconds: float = 5.0,
        heartbeat_seconds: float = 15.0,
        statement_timeout: float = 10.0,
    ) -> None:
        self.database = database
        # how often a waiting node tries again: the longest a takeover waits
        self.retry_seconds = retry_seconds
        # how often a holder checks its connection beyond the driver's own notice
        self.heartbeat_seconds = heartbeat_seconds
        self.statement_timeout = statement_timeout
        self.label = _node_label()
        self._lost: set[str] = set()

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[asyncio.Event]:
        """Wait until this node holds the lock ``name``, then hold it for the block.

        The event yielded is set when the lock is lost (its connection died); the
        caller must then stop what the lock protects and leave the block. Leaving it
        releases the lock. Errors reaching the database while waiting propagate.
        """
        if not self.database.is_postgres:
            yield asyncio.Event()
            return
        connection = await self._acquire(name)
        lost = asyncio.Event()
        driver = await _driver_connection(connection)

        def on_terminated(_: Any) -> None:
            if not lost.is_set():
                logger.warning("storage.lock.lost name=%s reason=connection closed", name)
            lost.set()

        driver.add_termination_listener(on_terminated)
        heartbeat = asyncio.create_task(
            self._heartbeat(connection, name, lost), name=f"storage.lock.heartbeat:{name}"
        )
        try:
            yield lost
        finally:
            heartbeat.cancel()
            with suppress(asyncio.CancelledError):
                await heartbeat
            driver.remove_termination_listener(on_terminated)
            if lost.is_set():
                self._lost.add(name)
            await _discard(connection)
            logger.info("storage.lock.released name=%s", name)

    async def _acquire(self, name: str) -> AsyncConnection:
        key = lock_key(name)
        last_holder: object = None
        if name in self._lost:
            # this node just lost the lock: a node that has been waiting goes first
            # (it tries every retry period), instead of this one taking it straight back
            self._lost.discard(name)
            await asyncio.sleep(2 * self.retry_seconds)
        while True:
            connection = await self.database.engine.connect()
            try:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                await self._execute(connection, _SESSION, {"label": self.label})
                while True:
                    got = (await self._execute(connection, _TRY_LOCK, {"key": key})).scalar()
                    if got:
                        logger.info("storage.lock.acquired name=%s by=%s", name, self.label)
                        return connection
                    holder = await self._holder(connection, key)
                    if holder != last_holder:
                        logger.info(
                            "storage.lock.waiting name=%s by=%r holder_pid=%s holder=%r "
                            "holder_addr=%s retry_seconds=%.1f",
                            name,
                            self.label,
                            *(holder or (None, None, None)),
                            self.retry_seconds,
                        )
                        last_holder = holder
                    await asyncio.sleep(self.retry_seconds)
            except BaseException:
                await _discard(connection)
                raise

    async def _holder(self, connection: AsyncConnection, key: int) -> tuple[Any, ...] | None:
        unsigned = key & 0xFFFFFFFFFFFFFFFF
        row = (
            await self._execute(
                connection, _HOLDER, {"classid": unsigned >> 32, "objid": unsigned & 0xFFFFFFFF}
            )
        ).first()
        return None if row is None else (row.pid, row.application_name, row.client_addr)

    async def _heartbeat(self, connection: AsyncConnection, name: str, lost: asyncio.Event) -> None:
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), timeout=self.heartbeat_seconds)
            except TimeoutError:
                try:
                    await self._execute(connection, text("SELECT 1"))
                except Exception as exc:  # any failure: the lock can no longer be vouched for
                    logger.warning(
                        "storage.lock.lost name=%s reason=%s: %s", name, type(exc).__name__, exc
                    )
                    lost.set()

    async def _execute(
        self, connection: AsyncConnection, statement: Any, params: dict[str, Any] | None = None
    ) -> Any:
        return await asyncio.wait_for(
            connection.execute(statement, params or {}), timeout=self.statement_timeout
        )


async def _driver_connection(connection: AsyncConnection) -> Any:
    raw = await connection.get_raw_connection()
    return raw.driver_connection


async def _discard(connection: AsyncConnection) -> None:
    """Close the lock's connection for good (never back to the pool, where it would keep
    holding the lock): the server releases every advisory lock it held."""
    with suppress(Exception):
        await connection.invalidate()
    with suppress(Exception):
        await connection.close()
