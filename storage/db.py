"""Engine and unit-of-work factory for SQLite (aiosqlite) and PostgreSQL (asyncpg).

SQLite runs in WAL mode with a busy timeout, and every write transaction starts with
``BEGIN IMMEDIATE``: the writer lock is taken up front, so two writers queue on the busy
timeout instead of failing with "database is locked" when one upgrades a read lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
_BEFORE_COMMIT_KEY = "deskbot.before_commit"


def json_dumps(value: Any) -> str:
    """JSON columns as text: orjson, keys that are not strings written as strings (as
    ``json.dumps`` writes them)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def before_commit(session: AsyncSession, work: Callable[[], Awaitable[None]]) -> None:
    """Run ``work`` in this unit of work just before it commits (rows kept to be written
    together, ticket numbers reserved and not used); not at all if it rolls back."""
    session.info.setdefault(_BEFORE_COMMIT_KEY, []).append(work)


def _prepare_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # take transaction control away from the driver so BEGIN is ours to issue
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("deskbot_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """One engine and session factory per process; the bot owns the transactions."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 10) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.is_postgres = parsed.get_backend_name() == "postgresql"
        kwargs: dict[str, Any] = {
            "echo": echo,
            "json_serializer": json_dumps,
            "json_deserializer": orjson.loads,
        }
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        else:
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = pool_size
            # no pre-ping: it cost a round trip per transaction (about a tenth of a
            # message's CPU). A connection the server dropped fails its transaction with a
            # disconnect error instead; SQLAlchemy then recycles the whole pool and the
            # caller retries (the manager raises TransientError, R47).
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            _prepare_sqlite(self.engine)
            # one writer at a time inside this process; BEGIN IMMEDIATE handles others
            self._sqlite_write_lock: asyncio.Lock | None = asyncio.Lock()
        else:
            self._sqlite_write_lock = None
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(
            self.engine.execution_options(deskbot_begin="DEFERRED"), expire_on_commit=False
        )
        self._single_statement_sessions = (
            None
            if self.is_sqlite
            else async_sessionmaker(
                self.engine.execution_options(isolation_level="AUTOCOMMIT"),
                expire_on_commit=False,
            )
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write unit of work: commit on success, roll back on any exception."""
        if self._sqlite_write_lock is not None:
            async with self._sqlite_write_lock:
                async with self._session() as session:
                    yield session
        else:
            async with self._session() as session:
                yield session

    @asynccontextmanager
    async def single_statement(self) -> AsyncIterator[AsyncSession]:
        """A unit of work of exactly one write statement. On PostgreSQL it runs in
        autocommit: one statement is atomic by itself, and the BEGIN and COMMIT round
        trips of a transaction around it would cost more than the statement. On SQLite it
        is :meth:`transaction` (the writer lock is taken either way)."""
        if self._single_statement_sessions is None:
            async with self.transaction() as session:
                yield session
            return
        async with self._single_statement_sessions() as session:
            yield session
            # what only a flush or a commit would write must not be dropped unseen
            if session.new or session.dirty or session.deleted:
                raise RuntimeError("single_statement(): ORM changes need transaction()")
            if session.info.get(_BEFORE_COMMIT_KEY):
                raise RuntimeError("single_statement(): work before commit needs transaction()")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only unit of work (SQLite: a deferred transaction, no writer lock)."""
        # closing the session ends the transaction without expiring what was loaded
        async with self._read_sessions() as session:
            yield session

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            try:
                yield session
                for work in session.info.pop(_BEFORE_COMMIT_KEY, ()):
                    await work()
                await session.commit()
            except BaseException:
                await session.rollback()
                raise

    async def dispose(self) -> None:
        await self.engine.dispose()
