"""Socket Mode through the live channel: R9 (two connections, a refresh, 1,000 events,
each handled exactly once) and R10 (too_many_websockets → growing backoff)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.types import HandleResult, Inbound
from channels.slack import convert
from knowledge import KnowledgeBase
from storage.db import Database
from storage.repositories import Inbox as InboxRepository
from tests.channels.slack.fake_slack import FakeSlackWebApi
from tests.channels.slack.fake_socket_mode import FakeSocketMode
from tests.channels.slack.harness import ALICE, ALICE_DM, SlackDesk, make_desk
from tests.channels.slack.signing import SlackRequestSigner

EVENTS = 1000
BASE_DELAY = 0.05


@dataclass
class Running:
    """The channel in Socket Mode, what the handler saw, and the inbox being driven."""

    desk: SlackDesk
    seen: list[str]
    all_done: asyncio.Event
    inbox: InboxDriver


StartDesk = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_desk(
    database: Database,
    tmp_path: Path,
    fake_slack: FakeSlackWebApi,
    fake_socket_mode: FakeSocketMode,
    slack_signer: SlackRequestSigner,
    sample_kb: KnowledgeBase,
) -> AsyncIterator[StartDesk]:
    """Starts the channel in Socket Mode with a handler that only records what it got."""
    started: list[Running] = []

    async def start(*, connections: int, expect: int = EVENTS) -> Running:
        seen: list[str] = []
        all_done = asyncio.Event()

        async def handler(inbound: Inbound) -> HandleResult:
            seen.append(inbound.external_id)
            if len(seen) >= expect:
                all_done.set()
            return HandleResult(duplicate=False)

        desk = await make_desk(
            database,
            tmp_path,
            fake_slack,
            slack_signer,
            handler=handler,
            socket_mode=True,
            knowledge=sample_kb,
        )
        desk.slack.config = dataclasses.replace(
            desk.slack.config,
            socket_connections=connections,
            socket_base_delay=BASE_DELAY,
            socket_max_delay=1.0,
        )
        await desk.slack.start()
        running = Running(desk, seen, all_done, InboxDriver(desk))
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in started:
            await running.inbox.finish()
            await running.desk.slack.stop()
            await running.desk.http.aclose()


def _event(n: int) -> dict[str, str]:
    return {
        "type": "message",
        "channel": ALICE_DM,
        "channel_type": "im",
        "user": ALICE,
        "text": f"event {n}",
        "ts": f"1700000000.{n:06d}",
    }


async def test_r9_two_connections_a_refresh_and_1000_events_each_handled_once(
    start_desk: StartDesk, fake_socket_mode: FakeSocketMode, database: Database
) -> None:
    running = await start_desk(connections=2)
    seen, all_done = running.seen, running.all_done
    await fake_socket_mode.wait_for_connections(2)
    # Slack redelivers an unacked envelope after a while; on a loaded CI machine an ack
    # can take seconds, so redelivery waits long enough not to fire on slowness alone
    # (the redelivery path has its own test below)
    fake_socket_mode.redeliver_after = 30
    first_two = {c.id for c in fake_socket_mode.open_connections}
    for n in range(EVENTS):
        if n == EVENTS // 2:
            await fake_socket_mode.send_disconnect("refresh_requested")
        if not fake_socket_mode.open_connections:
            await fake_socket_mode.wait_for_connections(1)
        await fake_socket_mode.push_event(_event(n), event_id=f"EvSM{n:05d}")
    # hang guards, not speed assertions: speed is measured in benchmarks
    await asyncio.wait_for(all_done.wait(), timeout=120)
    await fake_socket_mode.wait_until(lambda: not fake_socket_mode.unacked, timeout=60)
    await running.inbox.finish()

    # handled exactly once, stored once
    assert sorted(seen) == [f"EvSM{n:05d}" for n in range(EVENTS)]
    async with database.read() as session:
        rows = await InboxRepository(session).count_by_status()
    assert rows == {"done": EVENTS}
    # every event was acked (on its first envelope or on a redelivery), none twice
    acked = {
        e.event_id for e in fake_socket_mode.envelopes if e.envelope_id in fake_socket_mode.acks
    }
    assert acked == {f"EvSM{n:05d}" for n in range(EVENTS)}
    assert fake_socket_mode.duplicate_acks == []
    # the refresh really happened: the first two connections were replaced and closed
    now_open = {c.id for c in fake_socket_mode.open_connections}
    assert len(now_open) == 2 and not now_open & first_two
    for connection in first_two:
        await asyncio.wait_for(fake_socket_mode.connections[connection].closed.wait(), 5)
    # nothing was sent to a connection after it was asked to go away
    refresh_at = next(
        i for i, e in enumerate(fake_socket_mode.envelopes) if e.event_id == "EvSM00500"
    )
    assert all(e.connection_id not in first_two for e in fake_socket_mode.envelopes[refresh_at:])


async def test_r9_an_envelope_to_a_dead_connection_is_redelivered_and_kept_once(
    start_desk: StartDesk, fake_socket_mode: FakeSocketMode, database: Database
) -> None:
    """The event reached our inbox but its ack died with the socket: Slack redelivers it
    on the other connection (retry_attempt 1); the inbox keeps one row, one handling."""
    running = await start_desk(connections=2, expect=1)
    desk, seen, handled = running.desk, running.seen, running.all_done
    await fake_socket_mode.wait_for_connections(2)
    fake_socket_mode.redeliver_after = 0.2
    first, second = fake_socket_mode.open_connections
    assert await desk.slack.access.accept(_inbound_like_slack(desk, "EvLOST0001"))
    await asyncio.wait_for(handled.wait(), 5)

    fake_socket_mode.draining.add(first.id)
    await first.ws.close()
    await asyncio.wait_for(first.closed.wait(), 5)
    envelope = await fake_socket_mode.push_event(_event(1), event_id="EvLOST0001", connection=first)
    await fake_socket_mode.wait_until(lambda: fake_socket_mode.redelivered)
    [again] = fake_socket_mode.redelivered
    assert again.event_id == "EvLOST0001" and again.envelope_id != envelope.envelope_id
    assert again.retry_attempt == 1 and again.connection_id == second.id
    await fake_socket_mode.wait_for_ack(again.envelope_id)  # acked after the inbox insert

    await running.inbox.finish()
    assert await desk.worker.run_once() == 0
    async with database.read() as session:
        rows = await InboxRepository(session).count_by_status()
    assert rows == {"done": 1}
    assert seen == ["EvLOST0001"]


class InboxDriver:
    """The real inbox worker's ``run_once``, driven until asked to finish: unlike
    ``InboxWorker.stop()`` it never cancels a row mid-way, so every row ends settled."""

    def __init__(self, desk: SlackDesk) -> None:
        self.desk = desk
        self._finish = asyncio.Event()
        self._task = asyncio.create_task(self._drive(), name="test.inbox")

    async def _drive(self) -> None:
        inbox = self.desk.core.inbox
        while True:
            inbox.wakeup.clear()
            if await self.desk.worker.run_once():
                continue
            if self._finish.is_set():
                return
            wakeup = asyncio.ensure_future(inbox.wakeup.wait())
            finish = asyncio.ensure_future(self._finish.wait())
            await asyncio.wait({wakeup, finish}, return_when=asyncio.FIRST_COMPLETED)
            wakeup.cancel()
            finish.cancel()

    async def finish(self, *, timeout: float = 10.0) -> None:
        """Handle what is accepted, then stop."""
        self._finish.set()
        await asyncio.wait_for(self._task, timeout)


def _inbound_like_slack(desk: SlackDesk, event_id: str) -> Inbound:
    body = {"event_id": event_id, "event": _event(1), "team_id": "T0DESK001"}
    inbound = convert.inbound_from_event(body, bot_user_id=desk.slack.bot_user_id)
    assert inbound is not None and inbound.external_id == event_id
    return inbound


async def test_r10_too_many_websockets_backs_off_growing(
    start_desk: StartDesk, fake_socket_mode: FakeSocketMode
) -> None:
    refused = 5
    fake_socket_mode.refuse_next(refused)
    desk = (await start_desk(connections=1)).desk
    await fake_socket_mode.wait_for_connections(1, timeout=10)
    socket = desk.slack.socket
    assert socket is not None

    # one attempt per refusal plus the one that got a hello: no storm
    assert fake_socket_mode.refused == refused
    assert fake_socket_mode.connection_attempts == refused + 1
    assert len(socket.delays) == refused
    # each wait was at least half its doubling ceiling: 0.025, 0.05, 0.1, 0.2, 0.4 s
    gaps = [
        b - a
        for a, b in zip(
            fake_socket_mode.attempt_times, fake_socket_mode.attempt_times[1:], strict=False
        )
    ]
    for n, gap in enumerate(gaps):
        assert gap >= 0.9 * BASE_DELAY * 2**n / 2, (n, gaps)
    assert gaps[-1] >= 4 * BASE_DELAY  # grew: 8 × base is the last ceiling

    # a refusal on a live connection backs off too, and the hello reset the delay (an
    # envelope acked on the connection shows that its hello was handled)
    envelope = await fake_socket_mode.push_event(_event(1), event_id="EvR10")
    await fake_socket_mode.wait_for_ack(envelope.envelope_id)
    before = fake_socket_mode.connection_attempts
    fake_socket_mode.refuse_next(2)
    await fake_socket_mode.send_disconnect("too_many_websockets")
    await fake_socket_mode.wait_for_connections(1, timeout=10)
    assert fake_socket_mode.connection_attempts - before == 3
    after = fake_socket_mode.attempt_times[before - 1 :]
    later_gaps = [b - a for a, b in zip(after, after[1:], strict=False)]
    assert all(g >= 0.9 * BASE_DELAY / 2 for g in later_gaps), later_gaps
    assert socket.delays[refused:] and max(socket.delays[refused:]) <= 4 * BASE_DELAY
