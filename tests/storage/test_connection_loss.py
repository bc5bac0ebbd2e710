"""R47: the PostgreSQL connection dropped mid-transaction → a clean failure, an idempotent
retry, and the outbox resumes. Run against the machine's real PostgreSQL server."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from bot.errors import TransientError
from bot.turn import Turn
from storage.models import InboundReceipt, Message, OutboxRow
from tests.conftest import Desk, text_of


class _DropsConnection:
    """A router that kills its own database connection mid-turn, the first time only."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.dropped = 0

    async def route(self, turn: Turn) -> None:
        if self.dropped == 0:
            self.dropped += 1
            # the server ends this backend: the rest of the transaction cannot commit
            await turn.session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        await self.inner.route(turn)  # type: ignore[attr-defined]


async def _count(desk: Desk, model: type) -> int:
    async with desk.core.db.read() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


# R47 is about the PostgreSQL server ending a connection: these run on PostgreSQL only
pytestmark = pytest.mark.parametrize("database", ["postgres"], indirect=True)


async def test_connection_dropped_mid_transaction_fails_cleanly_and_retries_once(
    desk: Desk,
) -> None:
    first = await desk.core.manager.handle(desk.inbound("how do I connect to the vpn from home"))
    assert "VPN" in text_of(await desk.delivered())
    router = _DropsConnection(desk.core.manager.router)
    desk.core.manager.router = router  # type: ignore[assignment]
    inbound = desk.inbound("the printer prints blank pages")

    with pytest.raises(TransientError):
        await desk.core.manager.handle(inbound)
    assert router.dropped == 1
    # nothing of the failed attempt was kept: the receipt rolled back with the rest
    assert await _count(desk, InboundReceipt) == 1

    # the same message again (a channel redelivers it): handled, exactly once
    result = await desk.core.manager.handle(inbound)
    assert not result.duplicate and result.outbox_ids
    again = await desk.core.manager.handle(inbound)
    assert again.duplicate
    assert await _count(desk, InboundReceipt) == 2
    messages = 1 + len(first.outbox_ids) + 1 + len(result.outbox_ids)
    assert await _count(desk, Message) == messages

    # the outbox resumes on fresh connections and delivers the answer once
    replies = await desk.delivered()
    assert [r.meta["message_id"] for r in replies] == sorted(
        {r.meta["message_id"] for r in replies}
    )
    assert len(replies) == len(result.outbox_ids)
    async with desk.core.db.read() as session:
        statuses = (await session.execute(select(OutboxRow.status))).scalars().all()
    assert set(statuses) == {"sent"}


async def test_outbox_survives_the_server_dropping_every_connection(desk: Desk) -> None:
    await desk.core.manager.handle(desk.inbound("how do I connect to the vpn from home"))
    # every pooled connection of this database is ended by the server
    async with desk.core.db.engine.connect() as conn:
        await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    delivered = 0
    for _ in range(3):  # one sweep may fail on a dead connection; the next one recovers
        try:
            delivered += await desk.core.dispatcher.run_once()
        except Exception as exc:  # the dispatcher's run loop logs and carries on
            assert "connection" in str(exc).lower() or "closed" in str(exc).lower()
    assert delivered >= 1
    assert len(desk.channel.sent) == delivered
