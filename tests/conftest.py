"""Shared fixtures: real databases (SQLite in a temp dir, the machine's PostgreSQL) and a
``desk`` that drives the real conversation manager through an in-process channel, so a
test reads like a transcript::

    replies = await desk.say("how do I connect to the vpn")
    assert "GlobalProtect" in replies[0].markdown
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.clock import ManualClock
from bot.main import Core, build_core
from bot.outbox import OutboxPolicy
from bot.settings import SAMPLE_CATALOG, SAMPLE_KB_DIR, Settings
from bot.types import Inbound, Outbound, Sender
from channels.memory import MemoryChannel
from knowledge import KnowledgeBase
from storage.db import Database
from storage.migrate import upgrade

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_DSN = os.environ.get("DESKBOT_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432")
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def need_peer(available: bool, reason: str) -> None:
    """Skip when a real peer is missing, except under CI=true, where that is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing peer is a failure, not a skip)")
    pytest.skip(reason)


async def _pg_admin_execute(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(
        PG_DSN.replace("postgresql+asyncpg", "postgresql") + "/postgres", timeout=5
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even inside a running loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _pg_available() -> bool:
    try:
        run_async(_pg_admin_execute("SELECT 1"))
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def pg_database_url(worker_id: str) -> Iterator[str]:
    """One PostgreSQL database per test worker, migrated once, dropped at the end."""
    need_peer(_pg_available(), f"PostgreSQL is not reachable at {PG_DSN}")
    name = f"deskbot_test_{worker_id}_{uuid.uuid4().hex[:8]}"
    run_async(_pg_admin_execute(f'CREATE DATABASE "{name}"'))
    url = f"{PG_DSN}/{name}"

    async def _migrate() -> None:
        database = Database(url)
        await upgrade(database)
        await database.dispose()

    run_async(_migrate())
    yield url
    run_async(_pg_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def worker_id(request: pytest.FixtureRequest) -> str:
    workerinput = getattr(request.config, "workerinput", None)
    return workerinput["workerid"] if workerinput else "main"


async def _truncate_pg(database: Database) -> None:
    from sqlalchemy import text

    from storage.models import Base

    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    async with database.engine.begin() as conn:
        # a connection left open by an earlier test on this worker (a background task
        # that outlived its test) must not block this one: end it first
        await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        await conn.execute(text("SET LOCAL lock_timeout = '20s'"))
        await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated, empty database: SQLite in a temp dir, or the real PostgreSQL."""
    if request.param == "sqlite":
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'deskbot.sqlite3'}")
        await upgrade(db)
    else:
        url = request.getfixturevalue("pg_database_url")
        db = Database(url)
        await _truncate_pg(db)
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture
async def sqlite_database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'deskbot.sqlite3'}")
    await upgrade(db)
    try:
        yield db
    finally:
        await db.dispose()


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "var_dir": tmp_path / "var",
        "kb_dir": SAMPLE_KB_DIR,
        "catalog": SAMPLE_CATALOG,
        "secret_key": "test-secret-key-not-for-production",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@dataclass
class Desk:
    """The real core, one in-process channel, and a clock the test moves."""

    core: Core
    channel: MemoryChannel
    clock: ManualClock
    _counter: int = 0
    _seen: int = 0

    def inbound(
        self,
        text: str = "",
        *,
        user: str = "alice",
        email: str | None = None,
        button: str | None = None,
        external_id: str | None = None,
        thread: str | None = None,
    ) -> Inbound:
        self._counter += 1
        sender = Sender(
            external_id=f"user:{user}",
            display_name=user.capitalize(),
            email=email,
            email_verified=email is not None,
        )
        return Inbound(
            channel=self.channel.kind,
            external_id=external_id or f"msg-{self._counter}-{uuid.uuid4().hex[:6]}",
            sender=sender,
            text=text,
            thread_key=thread or f"dm:{user}",
            reply_to={"user": user},
            button=button,
        )

    async def say(self, text: str = "", **kwargs: object) -> list[Outbound]:
        """Send one message as a person and return the replies that were delivered."""
        await self.core.manager.handle(self.inbound(text, **kwargs))  # type: ignore[arg-type]
        return await self.delivered()

    async def press(self, value: str, *, user: str = "alice") -> list[Outbound]:
        return await self.say("", button=value, user=user)

    async def delivered(self) -> list[Outbound]:
        await self.core.dispatcher.drain()
        new = [s.outbound for s in self.channel.sent[self._seen :]]
        self._seen = len(self.channel.sent)
        return new


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds, polling; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def advisory_holder_pids(database: Database, name: str) -> list[int]:
    """The backends holding the session-level advisory lock ``name`` (storage/locks.py)
    in ``database``, read from pg_locks."""
    from sqlalchemy import text

    from storage.locks import lock_key

    unsigned = lock_key(name) & 0xFFFFFFFFFFFFFFFF
    async with database.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid = :hi AND objid = :lo AND objsubid = 1 "
                # advisory locks are per database: other test workers hold the same
                # names in theirs at the same time
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF},
        )
        return [int(pid) for pid in rows.scalars()]


def text_of(replies: list[Outbound]) -> str:
    return "\n".join(r.markdown for r in replies)


def buttons_of(replies: list[Outbound]) -> list[str]:
    return [b.value for r in replies for b in r.buttons]


@pytest.fixture(scope="session")
def sample_kb() -> KnowledgeBase:
    """The sample knowledge base, loaded once per test process (tests do not change it)."""
    return KnowledgeBase.load(SAMPLE_KB_DIR)


@pytest.fixture
async def desk(database: Database, tmp_path: Path, sample_kb: KnowledgeBase) -> AsyncIterator[Desk]:
    clock = ManualClock()
    core = build_core(
        make_settings(tmp_path),
        clock=clock,
        database=database,
        knowledge=sample_kb,
        policy=OutboxPolicy(base_backoff=0.01, max_backoff=0.05, poll_seconds=0.05),
    )
    channel = MemoryChannel()
    core.registry.add(channel)
    yield Desk(core=core, channel=channel, clock=clock)
