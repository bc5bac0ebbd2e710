"""The durable inbox (R7, R8): accept fast, handle later, retry failures, never lose."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from bot.inbox import InboxWorker
from bot.types import HandleResult, Inbound, inbound_from_json, inbound_to_json
from storage.models import Alert, InboxRow
from tests.conftest import Desk


async def test_inbound_round_trips_through_json(desk: Desk) -> None:
    inbound = desk.inbound("hello", email="a@example.com")
    assert inbound_from_json(inbound_to_json(inbound)) == inbound


async def test_accepted_twice_handled_once(desk: Desk) -> None:
    inbound = desk.inbound("hi")
    assert await desk.core.inbox.accept(inbound)
    assert not await desk.core.inbox.accept(inbound)
    worker = InboxWorker(desk.core.inbox, desk.core.manager.handle)
    assert await worker.run_once() == 1
    assert await worker.run_once() == 0
    assert len(await desk.delivered()) == 1


async def test_a_failing_handler_is_retried_then_marked_failed(desk: Desk) -> None:
    calls: list[str] = []

    async def flaky(inbound: Inbound) -> HandleResult:
        calls.append(inbound.external_id)
        if len(calls) < 3:
            raise RuntimeError("database hiccup")
        return await desk.core.manager.handle(inbound)

    await desk.core.inbox.accept(desk.inbound("hi"))
    worker = InboxWorker(desk.core.inbox, flaky, base_backoff=0.001)
    for _ in range(3):
        await worker.run_once()
        desk.clock.advance(seconds=1)
    assert len(calls) == 3
    assert len(await desk.delivered()) == 1

    async def broken(inbound: Inbound) -> HandleResult:
        raise RuntimeError("always")

    await desk.core.inbox.accept(desk.inbound("second"))
    worker = InboxWorker(desk.core.inbox, broken, max_attempts=2, base_backoff=0.001)
    for _ in range(3):
        await worker.run_once()
        desk.clock.advance(seconds=1)
    async with desk.core.db.read() as session:
        statuses = sorted(r.status for r in (await session.execute(select(InboxRow))).scalars())
        alerts = [a.kind for a in (await session.execute(select(Alert))).scalars()]
    assert statuses == ["done", "failed"]
    assert alerts == ["inbound_failed"]


async def test_stop_lets_the_batch_in_hand_finish(desk: Desk) -> None:
    import asyncio

    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(inbound: Inbound) -> HandleResult:
        started.set()
        await release.wait()
        return await desk.core.manager.handle(inbound)

    await desk.core.inbox.accept(desk.inbound("hi"))
    worker = InboxWorker(desk.core.inbox, slow, poll_seconds=0.01)
    await worker.start()
    await asyncio.wait_for(started.wait(), timeout=5)
    stopping = asyncio.create_task(worker.stop(grace=5))
    release.set()
    await asyncio.wait_for(stopping, timeout=10)
    async with desk.core.db.read() as session:
        statuses = [r.status for r in (await session.execute(select(InboxRow))).scalars()]
    assert statuses == ["done"]


async def test_a_database_outage_never_uses_up_the_attempts(desk: Desk) -> None:
    """TransientError (the database down, R47) waits with a capped backoff, however many
    times; a message is given up only for errors that are its own."""
    from bot.errors import TransientError

    calls: list[str] = []

    async def outage(inbound: Inbound) -> HandleResult:
        calls.append(inbound.external_id)
        if len(calls) <= 5:
            raise TransientError("database unavailable: OperationalError")
        return await desk.core.manager.handle(inbound)

    await desk.core.inbox.accept(desk.inbound("hi"))
    worker = InboxWorker(desk.core.inbox, outage, max_attempts=2, base_backoff=1.0, max_backoff=4.0)
    for _ in range(6):
        await worker.run_once()
        async with desk.core.db.read() as session:
            row = (await session.execute(select(InboxRow))).scalar_one()
        if row.status == "pending":
            # the wait doubles but never passes max_backoff
            assert row.next_attempt_at - desk.clock.now() <= timedelta(seconds=4)
        desk.clock.advance(seconds=5)
    assert len(calls) == 6
    async with desk.core.db.read() as session:
        row = (await session.execute(select(InboxRow))).scalar_one()
        alerts = (await session.execute(select(Alert))).scalars().all()
    assert row.status == "done" and row.attempts == 5
    assert alerts == []
    assert len(await desk.delivered()) == 1
