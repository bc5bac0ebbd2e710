"""One node at a time holds the mailbox: real PostgreSQL (advisory lock), real Dovecot.

Each "node" is a core of its own (its own engine and pool on the same database) with its
own live EmailChannel on the same mailbox, wired as ``deskbot run`` wires it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.main import Core
from bot.types import HandleResult, Inbound
from channels.email.adapter import EmailChannel
from storage.db import Database
from storage.models import Conversation, OutboxRow
from tests.channels.email.desk import DESK, FAST, EmailDesk, mail, make_core
from tests.channels.email.peers import Dovecot, SmtpPeer
from tests.conftest import advisory_holder_pids, until

pytestmark = pytest.mark.parametrize("database", ["postgres"], indirect=True)

TAKEOVER_RETRY = 0.1  # how often a waiting node tries the lock in these tests


@dataclass
class Node:
    """One deskbot process: a core and the email channel it runs."""

    name: str
    core: Core
    channel: EmailChannel
    results: list[HandleResult] = field(default_factory=list)
    stall_after: int | None = None  # the mails after this many hang, never handled
    stalled: asyncio.Event = field(default_factory=asyncio.Event)
    calls: int = 0

    async def handle(self, inbound: Inbound) -> HandleResult:
        self.calls += 1
        if self.stall_after is not None and self.calls > self.stall_after:
            # a batch's mails come in together: hang once the ones before are handled
            while len(self.results) < self.stall_after:
                await asyncio.sleep(0.01)
            self.stalled.set()
            await asyncio.Event().wait()  # until the node is stopped
        result = await self.core.manager.handle(inbound)
        self.results.append(result)
        return result

    async def wait_results(self, count: int, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.results) < count:
                await asyncio.sleep(0.02)


@dataclass
class Cluster:
    desk: EmailDesk
    nodes: list[Node]
    databases: list[Database]

    def node(self, name: str, tmp_path: Path) -> Node:
        database = Database(self.desk.core.db.url)
        self.databases.append(database)
        core = make_core(database, tmp_path / name)
        core.manager.node_locks.retry_seconds = TAKEOVER_RETRY
        node = Node(name=name, core=core, channel=None)  # type: ignore[arg-type]
        node.channel = EmailChannel(
            desk_address=DESK,
            secret=core.settings.ensure_secret_key(),
            # a mail appended between a scan and the IDLE that follows it is seen at the
            # next renewal: keep that short here
            imap=self.desk.imap_settings(poll_seconds=1.0),
            smtp=self.desk.smtp_settings(),
            handle=node.handle,
            claim_archive=core.manager.claim_archives,
            mailbox_lock=core.manager.exclusive,
            policy=FAST,
        )
        self.nodes.append(node)
        return node

    def handled(self) -> int:
        return sum(not r.duplicate for node in self.nodes for r in node.results)

    async def holder_pid(self, channel: EmailChannel) -> int:
        [pid] = await advisory_holder_pids(self.desk.core.db, channel.mailbox_name)
        return pid

    async def terminate(self, pid: int) -> None:
        async with self.desk.core.db.engine.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


@pytest.fixture
async def cluster(
    database: Database, tmp_path: Path, dovecot: Dovecot, smtp_peer: SmtpPeer
) -> AsyncIterator[Cluster]:
    desk = EmailDesk(
        core=make_core(database, tmp_path / "desk"),
        dovecot=dovecot,
        user=dovecot.user(),
        smtp=smtp_peer,
    )
    group = Cluster(desk=desk, nodes=[], databases=[])
    try:
        yield group
    finally:
        for node in group.nodes:
            await node.channel.stop()
        for db in group.databases:
            await db.dispose()


async def _moved(desk: EmailDesk, count: int, timeout: float = 20.0) -> None:
    """Wait until ``count`` mails are in the processed folder (the batch's move is done)."""
    async with asyncio.timeout(timeout):
        while await desk.folder_count("Processed") < count:
            await asyncio.sleep(0.05)


async def _one_holds_two_waits(cluster: Cluster, tmp_path: Path) -> tuple[Node, Node]:
    """Two nodes on the mailbox: the first holds it, the second has started and waits."""
    one, two = cluster.node("one", tmp_path), cluster.node("two", tmp_path)
    await one.channel.start()
    await asyncio.wait_for(one.channel.holding.wait(), 20)
    await two.channel.start()
    return one, two


async def test_two_pollers_on_one_mailbox_only_the_holder_fetches(
    cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    one, two = await _one_holds_two_waits(cluster, tmp_path)
    # the second node says that it waits, for which mailbox, and who holds it
    await until(lambda: "storage.lock.waiting" in caplog.text, timeout=20)
    waiting = next(r.getMessage() for r in caplog.records if "storage.lock.waiting" in r.msg)
    assert two.channel.mailbox_name in waiting
    assert f"holder_pid={await cluster.holder_pid(one.channel)}" in waiting

    await cluster.desk.deliver(
        *(mail("", message_id=f"lock-{i}", sender=f"p{i}@corp.test") for i in range(5))
    )
    await one.wait_results(5)
    await _moved(cluster.desk, 5)
    assert not two.channel.holding.is_set()
    assert two.channel.scans == 0 and not two.channel.connected.is_set()
    assert two.results == []
    assert await cluster.desk.count(Conversation) == 5
    assert await cluster.desk.folder_count("Processed") == 5


async def test_killed_lock_connection_hands_the_mailbox_over_exactly_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    one, two = await _one_holds_two_waits(cluster, tmp_path)
    await cluster.desk.deliver(*(mail("", message_id=f"kill-a{i}") for i in range(3)))
    await one.wait_results(3)

    await cluster.terminate(await cluster.holder_pid(one.channel))
    # the holder stops polling at once and waits again; the other takes over
    await until(lambda: not one.channel.holding.is_set(), timeout=20)
    await asyncio.wait_for(two.channel.holding.wait(), 20)
    await cluster.desk.deliver(*(mail("", message_id=f"kill-b{i}") for i in range(3)))
    await two.wait_results(3)
    await _moved(cluster.desk, 6)

    assert len(one.results) == 3  # nothing after it lost the mailbox
    assert cluster.handled() == 6
    assert await cluster.desk.count(Conversation) == 6
    assert await cluster.desk.folder_count("INBOX") == 0
    assert await cluster.desk.folder_count("Processed") == 6
    # the first node is back in line: it takes over again when the second stops
    await two.channel.stop()
    await asyncio.wait_for(one.channel.holding.wait(), 20)


async def test_holder_stopped_mid_batch_the_other_finishes_and_nothing_doubles(
    cluster: Cluster, tmp_path: Path
) -> None:
    one, two = await _one_holds_two_waits(cluster, tmp_path)
    one.stall_after = 2  # the third mail never reaches the core on node one
    await cluster.desk.deliver(
        *(mail("", message_id=f"stop-{i}", sender=f"s{i}@corp.test") for i in range(6))
    )
    await asyncio.wait_for(one.stalled.wait(), 20)
    await one.channel.stop()  # committed two; the stalled batch's move never came
    moved_by_one = await cluster.desk.folder_count("Processed")

    await asyncio.wait_for(two.channel.holding.wait(), 20)
    await until(lambda: cluster.handled() == 6, timeout=20)
    await _moved(cluster.desk, 6)
    assert len(one.results) == 2
    # what node one committed but did not move is re-fetched by two and dropped
    assert [r.duplicate for r in two.results].count(True) == 2 - moved_by_one
    assert await cluster.desk.count(Conversation) == 6
    assert await cluster.desk.folder_count("INBOX") == 0
    assert await cluster.desk.folder_count("Processed") == 6
    assert await cluster.desk.count(OutboxRow) == 6  # one acknowledgement per mail
