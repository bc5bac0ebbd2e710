"""The core path on SQLite and PostgreSQL: dedupe, identity, conversations, outbox."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bot.types import Sender
from storage.models import Conversation, InboundReceipt, Message, OutboxRow, Person
from tests.conftest import Desk


async def _count(desk: Desk, model: type) -> int:
    async with desk.core.db.read() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def test_one_message_one_reply(desk: Desk) -> None:
    replies = await desk.say("hi")
    assert len(replies) == 1
    assert "Hi Alice" in replies[0].markdown
    assert await _count(desk, Message) == 2
    async with desk.core.db.read() as session:
        row = (await session.execute(select(OutboxRow))).scalar_one()
    assert row.status == "sent"
    assert row.platform_id == "memory-1"


async def test_same_inbound_delivered_sequentially_is_handled_once(desk: Desk) -> None:
    inbound = desk.inbound("hello")
    results = [await desk.core.manager.handle(inbound) for _ in range(5)]
    assert [r.duplicate for r in results] == [False, True, True, True, True]
    replies = await desk.delivered()
    assert len(replies) == 1
    assert await _count(desk, InboundReceipt) == 1


async def test_same_inbound_delivered_concurrently_is_handled_once(desk: Desk) -> None:
    inbound = desk.inbound("hello")
    # distinct managers' locks do not help here: the database decides
    results = await asyncio.gather(*(desk.core.manager.handle(inbound) for _ in range(8)))
    assert sum(not r.duplicate for r in results) == 1
    assert len(await desk.delivered()) == 1
    assert await _count(desk, Message) == 2


async def test_alias_ids_recognise_a_refetch(desk: Desk) -> None:
    first = desk.inbound("printer jammed")
    again = desk.inbound("printer jammed")
    first = first.__class__(**{**_fields(first), "alt_ids": ("msgid:<a@b>",)})
    again = again.__class__(**{**_fields(again), "alt_ids": ("msgid:<a@b>",)})
    assert not (await desk.core.manager.handle(first)).duplicate
    assert (await desk.core.manager.handle(again)).duplicate


def _fields(value: object) -> dict[str, object]:
    return {name: getattr(value, name) for name in value.__slots__}  # type: ignore[attr-defined]


async def test_same_verified_email_is_one_person_across_channels(desk: Desk) -> None:
    await desk.say("hi", user="bob", email="Bob@Example.com")
    other = desk.inbound("hi again", user="bob-on-webchat", email="bob@example.com")
    other = other.__class__(**{**_fields(other), "channel": "memory"})
    await desk.core.manager.handle(other)
    await desk.delivered()
    assert await _count(desk, Person) == 1
    assert await _count(desk, Conversation) == 2


async def test_unverified_email_never_links_people(desk: Desk) -> None:
    await desk.say("hi", user="carol", email="carol@example.com")
    claim = desk.inbound("hi, I'm carol@example.com", user="mallory")
    sender = Sender(external_id="user:mallory", email="carol@example.com", email_verified=False)
    claim = claim.__class__(**{**_fields(claim), "sender": sender})
    await desk.core.manager.handle(claim)
    assert await _count(desk, Person) == 2


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(deliveries=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=12))
async def test_any_interleaving_of_repeats_yields_one_reply_per_message(
    desk: Desk, deliveries: list[int]
) -> None:
    """Messages 0..3 delivered in any order, any number of times: one reply each."""
    start_replies = len(desk.channel.sent)
    tag = desk._counter
    inbounds = [
        desk.inbound("thanks", external_id=f"h-{tag}-{i}", user=f"u{tag}x{i}") for i in range(4)
    ]
    await asyncio.gather(*(desk.core.manager.handle(inbounds[i]) for i in deliveries))
    await desk.delivered()
    assert len(desk.channel.sent) - start_replies == len(set(deliveries))


async def test_references_thread_only_within_the_same_person(desk: Desk) -> None:
    first = desk.inbound("printer jammed", user="dora", thread="msgid:a1@mail")
    first = first.__class__(**{**_fields(first), "alt_ids": ("msgid:a1@mail",)})
    one = await desk.core.manager.handle(first)
    follow = desk.inbound("also the toner is empty", user="dora", thread="msgid:a2@mail")
    follow = follow.__class__(**{**_fields(follow), "references": ("a1@mail",)})
    two = await desk.core.manager.handle(follow)
    assert two.conversation_id == one.conversation_id
    forged = desk.inbound("add me to this", user="mallory", thread="msgid:m1@evil")
    forged = forged.__class__(**{**_fields(forged), "references": ("a1@mail",)})
    three = await desk.core.manager.handle(forged)
    assert three.conversation_id != one.conversation_id


async def test_database_outage_is_a_transient_error(desk: Desk) -> None:
    from contextlib import asynccontextmanager

    import pytest
    from sqlalchemy.exc import OperationalError

    from bot.errors import TransientError

    @asynccontextmanager
    async def unreachable():  # type: ignore[no-untyped-def]
        raise OperationalError("BEGIN", {}, ConnectionError("server closed the connection"))
        yield

    desk.core.db.transaction = unreachable  # type: ignore[method-assign]
    # alone, and in a round with others: each caller is told to retry later
    with pytest.raises(TransientError):
        await desk.core.manager.handle(desk.inbound("hi"))
    outcomes = await asyncio.gather(
        *(desk.core.manager.handle(desk.inbound("hi", user=f"u{i}")) for i in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(outcome, TransientError) for outcome in outcomes)


async def test_archive_claim_is_won_once_and_taken_over_when_stale(desk: Desk) -> None:
    import asyncio
    from datetime import timedelta

    inbound = desk.inbound("printer jammed")
    await desk.core.manager.handle(inbound)
    claims = await asyncio.gather(
        *(desk.core.manager.claim_archive(inbound.channel, inbound.external_id) for _ in range(4))
    )
    assert sorted(claims) == [False, False, False, True]
    desk.clock.advance(minutes=6)  # the winner died before finishing: one more may take it
    assert await desk.core.manager.claim_archive(
        inbound.channel, inbound.external_id, stale_after=timedelta(minutes=5)
    )
