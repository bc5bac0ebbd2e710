"""Locks among nodes (storage/locks.py) against the real PostgreSQL, and SQLite's no-op."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from storage.db import Database
from storage.locks import AdvisoryLocks
from storage.migrate import upgrade
from tests.conftest import advisory_holder_pids, until

NAME = "test:mailbox ann@imap.example/INBOX"


async def _terminate(database: Database, pid: int) -> None:
    async with database.engine.connect() as conn:
        await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


class Node:
    """One node's hold on the lock, run as a task: ``entered`` once it holds it."""

    def __init__(self, locks: AdvisoryLocks) -> None:
        self.locks = locks
        self.entered = asyncio.Event()
        self.lost: asyncio.Event | None = None
        self.leave = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with self.locks.hold(NAME) as lost:
            self.lost = lost
            self.entered.set()
            waits = [asyncio.ensure_future(lost.wait()), asyncio.ensure_future(self.leave.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def other_node(database: Database) -> AsyncIterator[Database]:
    """A second process's view of the same database: its own engine and pool."""
    other = Database(database.url)
    try:
        yield other
    finally:
        await other.dispose()


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_one_node_holds_the_other_waits_and_takes_over_when_released(
    database: Database, other_node: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="storage.locks")
    first = Node(AdvisoryLocks(database, retry_seconds=0.05))
    await asyncio.wait_for(first.entered.wait(), 10)
    second = Node(AdvisoryLocks(other_node, retry_seconds=0.05))
    await until(lambda: "storage.lock.waiting" in caplog.text)
    [holder] = await advisory_holder_pids(database, NAME)
    assert f"holder_pid={holder}" in caplog.text
    await asyncio.sleep(0.3)  # several more tries, none of which may succeed
    assert not second.entered.is_set()

    first.leave.set()
    await asyncio.wait_for(first.task, 10)
    await asyncio.wait_for(second.entered.wait(), 10)
    assert await advisory_holder_pids(database, NAME) != [holder]
    assert len(await advisory_holder_pids(database, NAME)) == 1
    await second.stop()
    assert await advisory_holder_pids(database, NAME) == []


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_a_killed_lock_connection_is_noticed_and_the_waiter_takes_over(
    database: Database, other_node: Database
) -> None:
    # the heartbeat is far away: the driver's notice of the closed connection must do
    first = Node(AdvisoryLocks(database, retry_seconds=0.05, heartbeat_seconds=3600))
    await asyncio.wait_for(first.entered.wait(), 10)
    second = Node(AdvisoryLocks(other_node, retry_seconds=0.05))
    [holder] = await advisory_holder_pids(database, NAME)
    assert not second.entered.is_set()

    await _terminate(other_node, holder)
    assert first.lost is not None
    await asyncio.wait_for(first.lost.wait(), 10)
    await asyncio.wait_for(first.task, 10)  # the block was left
    await asyncio.wait_for(second.entered.wait(), 10)
    assert second.lost is not None and not second.lost.is_set()
    await second.stop()


class FreezingProxy:
    """A loopback TCP proxy to the database that can stop forwarding without closing
    anything: to the client, a half-open connection."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.frozen = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0
        self.clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.clients.add(task)
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        try:
            # stop() cancels this: a normal end (asyncio's server would log a cancelled handler)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(
                    self._pipe(reader, up_writer),
                    self._pipe(up_reader, writer),
                    return_exceptions=True,
                )
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self.frozen.is_set():
                await asyncio.Event().wait()  # swallow everything from now on
            writer.write(data)
            await writer.drain()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.clients:
            task.cancel()
        await asyncio.gather(*self.clients, return_exceptions=True)


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_a_lock_connection_gone_half_open_is_given_up_by_the_heartbeat(
    database: Database,
) -> None:
    url = make_url(database.url)
    proxy = FreezingProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    through_proxy = Database(url.set(host="127.0.0.1", port=proxy.port).render_as_string(False))
    try:
        locks = AdvisoryLocks(through_proxy, heartbeat_seconds=0.1, statement_timeout=0.5)
        async with locks.hold(NAME) as lost:
            assert len(await advisory_holder_pids(database, NAME)) == 1
            proxy.frozen.set()
            await asyncio.wait_for(lost.wait(), 10)
        # the server still sees the frozen connection: only cutting it frees the lock
        [holder] = await advisory_holder_pids(database, NAME)
        await _terminate(database, holder)
    finally:
        await proxy.stop()
        await through_proxy.dispose()


async def test_sqlite_holds_at_once_and_never_loses(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.sqlite3'}")
    await upgrade(database)
    try:
        locks = AdvisoryLocks(database)
        async with locks.hold(NAME) as lost, locks.hold(NAME) as again:
            assert not lost.is_set() and not again.is_set()
    finally:
        await database.dispose()
