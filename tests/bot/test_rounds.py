"""Rounds: messages that arrive together are handled in one transaction, each as if alone.

Every test runs on SQLite and PostgreSQL. "Together" means queued while a round was
being handled, which ``asyncio.gather`` of ``handle`` calls does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.errors import RejectedInput
from bot.main import Core
from bot.turn import Turn
from bot.types import Inbound, Sender
from knowledge import KnowledgeBase
from storage.db import Database
from storage.models import InboundReceipt, Message, OutboxRow
from tests.conftest import Desk, text_of, until


@contextmanager
def counting(desk: Desk, engine_event: str) -> Iterator[list[int]]:
    """Count an engine event on the desk's database meanwhile (``[count]``):
    ``before_cursor_execute`` for statements, ``begin`` for transactions."""
    seen = [0]

    def count(*_: object) -> None:
        seen[0] += 1

    engine = desk.core.db.engine.sync_engine
    event.listen(engine, engine_event, count)
    try:
        yield seen
    finally:
        event.remove(engine, engine_event, count)


@asynccontextmanager
async def two_nodes(
    database: object, tmp_path: Path, sample_kb: KnowledgeBase
) -> AsyncIterator[list[Core]]:
    """Two cores on the desk's database, each with its own engine, as two nodes are."""
    from bot.main import build_core
    from tests.conftest import make_settings

    assert isinstance(database, Database)
    cores = [
        build_core(
            make_settings(tmp_path / name), database=Database(database.url), knowledge=sample_kb
        )
        for name in ("a", "b")
    ]
    try:
        yield cores
    finally:
        for core in cores:
            await core.db.dispose()


async def _count(desk: Desk, model: type) -> int:
    async with desk.core.db.read() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def test_concurrent_visitors_share_one_transaction(desk: Desk) -> None:
    for i in range(12):  # everyone has a conversation already
        await desk.say("hi", user=f"v{i}")
    with counting(desk, "begin") as begun:
        results = await asyncio.gather(
            *(desk.core.manager.handle(desk.inbound("thanks", user=f"v{i}")) for i in range(12))
        )
    assert begun[0] <= 2  # the first message alone, then the eleven queued behind it
    assert len({r.conversation_id for r in results}) == 12
    assert all(not r.duplicate and len(r.outbox_ids) == 1 for r in results)
    replies = await desk.delivered()
    assert [r.markdown for r in replies].count(
        "You're welcome! Anything else I can help with?"
    ) == 12


async def test_a_thread_keeps_its_order_across_rounds(desk: Desk) -> None:
    # queued together: the second answers the question the first one's reply asks
    first, second = (
        desk.inbound("reset my password"),
        desk.inbound("my SSO account"),
    )
    one, two = await asyncio.gather(
        desk.core.manager.handle(first), desk.core.manager.handle(second)
    )
    assert one.route == "request.password_reset" and two.route == "request.password_reset"
    replies = await desk.delivered()
    assert "Which account" in replies[0].markdown
    assert "How can the desk reach you" in replies[1].markdown
    async with desk.core.db.read() as session:
        ids = list(
            (
                await session.execute(
                    select(Message.id, Message.direction)
                    .where(Message.conversation_id == one.conversation_id)
                    .order_by(Message.id)
                )
            ).all()
        )
    assert [d for _, d in ids] == ["in", "out", "in", "out"]


async def test_one_bad_message_does_not_hold_back_the_others(desk: Desk) -> None:
    router = desk.core.manager.router
    route = router.route

    async def picky(turn: Turn) -> None:
        if turn.text == "poison":
            raise RejectedInput("that message cannot be handled")
        await route(turn)

    router.route = picky  # type: ignore[method-assign]
    inbounds = [desk.inbound("thanks", user=f"p{i}") for i in range(5)]
    inbounds.insert(2, desk.inbound("poison", user="bad"))
    outcomes = await asyncio.gather(
        *(desk.core.manager.handle(i) for i in inbounds), return_exceptions=True
    )
    assert isinstance(outcomes[2], RejectedInput)
    assert all(not isinstance(o, BaseException) for i, o in enumerate(outcomes) if i != 2)
    assert len(await desk.delivered()) == 5
    # the failed round left nothing behind: each message once, the poison one not at all
    assert await _count(desk, InboundReceipt) == 5
    assert await _count(desk, Message) == 10
    assert await _count(desk, OutboxRow) == 5


async def test_repeats_in_one_batch_are_dropped_after_the_first(desk: Desk) -> None:
    first = desk.inbound("thanks", user="rep")
    again = desk.inbound("thanks", user="other", external_id=first.external_id)
    outcomes = await asyncio.gather(
        desk.core.manager.handle(first), desk.core.manager.handle(again)
    )
    assert [o.duplicate for o in outcomes] == [False, True]
    assert len(await desk.delivered()) == 1


async def test_a_caller_that_stops_waiting_before_its_round_leaves_it_unhandled(
    desk: Desk,
) -> None:
    manager = desk.core.manager
    slow = asyncio.Event()
    route = manager.router.route

    async def held(turn: Turn) -> None:
        if turn.text == "hold":
            await slow.wait()
        await route(turn)

    manager.router.route = held  # type: ignore[method-assign]
    holding = asyncio.create_task(manager.handle(desk.inbound("hold", user="first")))
    await asyncio.sleep(0.05)  # the first round is under way, waiting in the router
    gave_up = asyncio.create_task(manager.handle(desk.inbound("thanks", user="impatient")))
    await asyncio.sleep(0)
    gave_up.cancel()
    slow.set()
    await holding
    with pytest.raises(asyncio.CancelledError):
        await gave_up
    assert await _count(desk, InboundReceipt) == 1


async def test_email_loop_cap_holds_when_mails_arrive_together(desk: Desk) -> None:
    """R19 when the mails of one sender are fetched in one batch: later ones wait for the
    next round, and every round counts the replies of those before it."""
    desk.core.manager.loop_guard_channels.add(desk.channel.kind)
    await desk.say("hi", user="looper")  # an existing person: the cap counts their replies
    outcomes = await asyncio.gather(
        *(desk.core.manager.handle(desk.inbound("thanks", user="looper")) for _ in range(15))
    )
    assert all(not o.duplicate for o in outcomes)
    replies = await desk.delivered()
    assert len(replies) == desk.core.manager.auto_reply_cap_per_hour - 1
    assert "welcome" in text_of(replies)


async def test_first_time_senders_of_a_round_are_opened_together(desk: Desk) -> None:
    from storage.models import Conversation, Identity, Person

    await desk.say("hi", user="known", email="known@corp.test")  # an earlier person
    inbounds = [desk.inbound("thanks", user=f"new{i}") for i in range(24)]
    inbounds += [
        # the same verified email from two identities: one person
        desk.inbound("thanks", user="twin-a", email="twin@corp.test"),
        desk.inbound("thanks", user="twin-b", email="Twin@corp.test"),
        # a new identity of someone known by their email: not a new person
        desk.inbound("thanks", user="known-elsewhere", email="known@corp.test"),
        # anonymous, with one name: two people
        desk.inbound("thanks", user="same"),
    ]
    same = inbounds[-1]
    inbounds.append(
        same.__class__(
            **{
                **{n: getattr(same, n) for n in same.__slots__},  # type: ignore[attr-defined]
                "external_id": "other-same",
                "sender": same.sender.__class__(external_id="user:same-2", display_name="Same"),
                "thread_key": "dm:same-2",
            }
        )
    )
    with counting(desk, "before_cursor_execute") as statements:
        results = await asyncio.gather(*(desk.core.manager.handle(i) for i in inbounds))
    assert all(not r.duplicate and r.outbox_ids for r in results)
    assert statements[0] < 20  # for the round, not three or more for each first-timer
    async with desk.core.db.read() as session:
        people = list((await session.execute(select(Person))).scalars())
        identities = {
            i.external_id: i.person_id for i in (await session.execute(select(Identity))).scalars()
        }
        owners = {
            c.id: c.person_id for c in (await session.execute(select(Conversation))).scalars()
        }
    by_email = {p.email: p.id for p in people if p.email}
    assert set(by_email) == {"known@corp.test", "twin@corp.test"}
    assert identities["user:twin-a"] == identities["user:twin-b"] == by_email["twin@corp.test"]
    assert identities["user:known-elsewhere"] == by_email["known@corp.test"]
    assert identities["user:same"] != identities["user:same-2"]
    assert len(people) == 1 + 24 + 1 + 2
    for inbound, result in zip(inbounds, results, strict=True):
        assert owners[result.conversation_id] == identities[inbound.sender.external_id]
    assert len(await desk.delivered()) == len(inbounds)


async def test_a_first_time_sender_racing_on_two_nodes_is_one_person(
    database: object, tmp_path: Path, sample_kb: KnowledgeBase
) -> None:
    from storage.models import Identity, Person

    async with two_nodes(database, tmp_path, sample_kb) as cores:
        sender = Sender(
            external_id="racer", display_name="Racer", email="r@corp.test", email_verified=True
        )
        results = await asyncio.gather(
            *(
                core.manager.handle(
                    Inbound(
                        channel="memory",
                        external_id=f"race-{n}",
                        sender=sender,
                        text="thanks",
                        thread_key=f"dm:racer-{n}",
                    )
                )
                for n, core in enumerate(cores)
            )
        )
        assert all(not r.duplicate for r in results)
        async with cores[0].db.read() as session:
            people = list((await session.execute(select(Person))).scalars())
            identities = list((await session.execute(select(Identity))).scalars())
        assert [p.email for p in people] == ["r@corp.test"]
        assert [(i.external_id, i.person_id) for i in identities] == [("racer", people[0].id)]


async def test_a_round_of_reports_opens_gap_free_tickets_with_their_events(desk: Desk) -> None:
    from storage.models import Conversation, Ticket, TicketCounter, TicketEvent

    await desk.say("my laptop will not start and I cannot work at all, only me", user="first")
    reports = [
        desk.inbound(
            f"my laptop will not start and I cannot work at all, only me ({i})", user=f"r{i}"
        )
        for i in range(6)
    ]
    chat = [desk.inbound("thanks", user=f"c{i}") for i in range(3)]  # no ticket for these
    results = await asyncio.gather(
        *(desk.core.manager.handle(i) for i in [*reports[:3], *chat, *reports[3:]])
    )
    assert [r.route for r in results].count("ticket.opened") == 6
    async with desk.core.db.read() as session:
        tickets = list((await session.execute(select(Ticket).order_by(Ticket.id))).scalars())
        events = list((await session.execute(select(TicketEvent))).scalars())
        counter = (await session.execute(select(TicketCounter))).scalar_one()
        links = {c.id: c.ticket_id for c in (await session.execute(select(Conversation))).scalars()}
    numbers = [t.number for t in tickets]
    assert numbers == [f"INC-{n:06d}" for n in range(1, 8)]  # one before, six in the round
    assert counter.last_value == 7  # what the round reserved and did not use went back
    assert sorted((e.ticket_id, e.action) for e in events) == [(t.id, "opened") for t in tickets]
    for ticket in tickets:
        assert links[ticket.conversation_id] == ticket.id
    replies = await desk.delivered()
    assert {n for n in numbers[1:]} <= {r.ticket_number for r in replies}


async def test_rows_kept_for_the_commit_are_written_then_and_not_after_a_rollback(
    desk: Desk,
) -> None:
    from sqlalchemy import func

    from storage.models import RefusedQuery
    from storage.repositories import KnowledgeFeedback

    db = desk.core.db

    def refuse(session: AsyncSession, query: str) -> None:
        KnowledgeFeedback(session).refused(
            query,
            now=desk.clock.now(),
            conversation_id=None,
            best_article_id=None,
            best_confidence=None,
        )

    async with db.transaction() as session:
        refuse(session, "kept")
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            refuse(session, "dropped")
            raise RuntimeError("the unit of work fails")
    async with db.read() as session:
        kept = list((await session.execute(select(RefusedQuery.query))).scalars())
        assert (await session.execute(select(func.count()).select_from(RefusedQuery))).scalar() == 1
    assert kept == ["kept"]


async def test_two_nodes_opening_tickets_at_once_share_one_gap_free_sequence(
    database: object, tmp_path: Path, sample_kb: KnowledgeBase
) -> None:
    from storage.models import Ticket, TicketCounter

    async with two_nodes(database, tmp_path, sample_kb) as cores:
        report = "my laptop will not start and I cannot work at all, only me"
        results = await asyncio.gather(
            *(
                core.manager.handle(
                    Inbound(
                        channel="memory",
                        external_id=f"{name}-{i}",
                        sender=Sender(external_id=f"{name}-{i}"),
                        text=f"{report} ({name} {i})",
                        thread_key=f"dm:{name}-{i}",
                    )
                )
                for name, core in zip("ab", cores, strict=True)
                for i in range(5)
            )
        )
        assert [r.route for r in results].count("ticket.opened") == 10
        async with cores[0].db.read() as session:
            numbers = sorted((await session.execute(select(Ticket.number))).scalars())
            counter = (await session.execute(select(TicketCounter))).scalar_one()
        assert numbers == [f"INC-{n:06d}" for n in range(1, 11)]
        assert counter.last_value == 10


def _hold_commit_of(desk: Desk, text: str) -> asyncio.Event:
    """Route as usual, but hold the commit of the round that holds ``text`` until the
    returned event is set (the round has routed its messages by then: it is writing)."""
    from storage.db import before_commit

    gate = asyncio.Event()
    router = desk.core.manager.router
    route = router.route

    async def holding(turn: Turn) -> None:
        await route(turn)
        if turn.text == text:
            before_commit(turn.session, gate.wait)

    router.route = holding  # type: ignore[method-assign]
    return gate


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_the_next_round_runs_while_one_is_committing(desk: Desk) -> None:
    manager = desk.core.manager
    assert manager.pipeline == 2
    for user in ("slow", "quick"):
        await desk.say("hi", user=user)
    gate = _hold_commit_of(desk, "thanks, bye")
    slow = asyncio.create_task(manager.handle(desk.inbound("thanks, bye", user="slow")))
    await asyncio.sleep(0.2)  # its round has routed and waits to commit
    quick = await asyncio.wait_for(manager.handle(desk.inbound("thanks", user="quick")), 10)
    assert not slow.done()
    assert not quick.duplicate and len(quick.outbox_ids) == 1
    gate.set()
    assert not (await asyncio.wait_for(slow, 10)).duplicate
    replies = await desk.delivered()
    assert len(replies) == 2


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_a_thread_waits_for_its_round_in_flight_to_commit(desk: Desk) -> None:
    manager = desk.core.manager
    await desk.say("hi", user="bystander")
    gate = _hold_commit_of(desk, "reset my password")
    first = asyncio.create_task(manager.handle(desk.inbound("reset my password")))
    await asyncio.sleep(0.2)  # routed, holding its commit
    # the answer to the first message's question, and someone else meanwhile
    second = asyncio.create_task(manager.handle(desk.inbound("my SSO account")))
    other = await asyncio.wait_for(manager.handle(desk.inbound("thanks", user="bystander")), 10)
    assert not other.duplicate
    await asyncio.sleep(0.1)
    assert not first.done() and not second.done()  # the thread's next message waits
    gate.set()
    one, two = await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert one.route == two.route == "request.password_reset"
    replies = [r for r in await desk.delivered() if r.conversation_id == one.conversation_id]
    # the second message saw what the first one's round committed: its flow went on
    assert "Which account" in replies[0].markdown
    assert "How can the desk reach you" in replies[1].markdown


async def test_sqlite_keeps_one_round_in_flight(desk: Desk) -> None:
    # a second write transaction on SQLite would only wait for the first one's lock
    assert desk.core.manager.pipeline == (1 if desk.core.db.is_sqlite else 2)


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_a_round_that_crashes_after_its_commit_stops_nothing_else(
    desk: Desk, caplog: pytest.LogCaptureFixture
) -> None:
    manager = desk.core.manager
    await desk.say("hi", user="after")
    events = manager.events

    def broken(event: object) -> None:
        raise RuntimeError("the bus is broken")

    events.publish = broken  # type: ignore[method-assign]
    handled = await asyncio.wait_for(manager.handle(desk.inbound("thanks", user="after")), 10)
    assert not handled.duplicate  # committed before the crash: its caller has the result
    await until(lambda: "manager.round.crashed" in caplog.text)
    del events.publish
    # the worker goes on: the next message is handled
    again = await asyncio.wait_for(manager.handle(desk.inbound("hi", user="after")), 10)
    assert not again.duplicate and again.conversation_id == handled.conversation_id


def _hold_commits_of(desk: Desk, *texts: str) -> tuple[dict[str, asyncio.Event], list[str]]:
    """Hold the commit of the first round that holds each of ``texts`` until that text's
    gate is set; the second value lists the texts whose rounds reached their commit."""
    from storage.db import before_commit

    gates = {t: asyncio.Event() for t in texts}
    waiting: list[str] = []
    router = desk.core.manager.router
    route = router.route

    async def holding(turn: Turn) -> None:
        await route(turn)
        if turn.text in gates and turn.text not in waiting:

            async def hold(text: str = turn.text) -> None:
                waiting.append(text)
                await gates[text].wait()

            before_commit(turn.session, hold)

    router.route = holding  # type: ignore[method-assign]
    return gates, waiting


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_rounds_go_on_beginning_while_the_database_is_slow_to_commit(desk: Desk) -> None:
    # a disk whose fsync stalls holds every commit at once: the rounds in flight wait,
    # and what arrives meanwhile is routed and written instead of waiting to begin
    manager = desk.core.manager
    assert (manager.pipeline, manager.pipeline_when_slow) == (2, 8)
    users = ("first", "second", "third", "fourth")
    for user in users:
        await desk.say("hi", user=user)
    gates, waiting = _hold_commits_of(desk, "thanks, bye", "thank you, bye")
    held = [asyncio.create_task(manager.handle(desk.inbound("thanks, bye", user="first")))]
    await until(lambda: len(waiting) == 1)  # one round in flight, held at its commit
    held.append(asyncio.create_task(manager.handle(desk.inbound("thank you, bye", user="second"))))
    await until(lambda: len(waiting) == 2)  # two rounds in flight, both held at commit
    assert not any(task.done() for task in held)
    # the two are slow to commit: two more rounds, one after the other, are answered
    third = await asyncio.wait_for(manager.handle(desk.inbound("thanks", user="third")), 10)
    fourth = await asyncio.wait_for(manager.handle(desk.inbound("thanks", user="fourth")), 10)
    assert not any(task.done() for task in held)
    assert len(third.outbox_ids) == len(fourth.outbox_ids) == 1
    for gate in gates.values():
        gate.set()
    done = await asyncio.wait_for(asyncio.gather(*held), 10)
    assert [r.duplicate for r in done] == [False, False]
    replies = await desk.delivered()
    assert sorted(r.conversation_id for r in replies) == sorted(
        r.conversation_id for r in [*done, third, fourth]
    )


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_a_round_slow_to_commit_keeps_the_next_one_to_the_normal_depth(
    desk: Desk,
) -> None:
    # not slow yet: a third round waits for one of the two in flight to commit
    manager = desk.core.manager
    manager.slow_commit = 3600.0
    for user in ("first", "second", "third"):
        await desk.say("hi", user=user)
    gates, waiting = _hold_commits_of(desk, "thanks, bye", "thank you, bye")
    held = [asyncio.create_task(manager.handle(desk.inbound("thanks, bye", user="first")))]
    await until(lambda: len(waiting) == 1)  # one round in flight, held at its commit
    held.append(asyncio.create_task(manager.handle(desk.inbound("thank you, bye", user="second"))))
    await until(lambda: len(waiting) == 2)
    third = asyncio.create_task(manager.handle(desk.inbound("thanks", user="third")))
    await asyncio.sleep(0.3)
    assert not third.done()
    gates["thanks, bye"].set()
    assert not (await asyncio.wait_for(third, 10)).duplicate
    gates["thank you, bye"].set()
    await asyncio.wait_for(asyncio.gather(*held), 10)


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_rounds_in_flight_count_the_same_article_without_waiting(desk: Desk) -> None:
    # every answer adds to its article's counts: with one row per article the second
    # round waited for the first one's commit to take that row's lock
    manager = desk.core.manager
    question = "how do I release my print job"
    for user in ("first", "second"):
        await desk.say("hi", user=user)
    gates, waiting = _hold_commits_of(desk, question)
    first = asyncio.create_task(manager.handle(desk.inbound(question, user="first")))
    await until(lambda: len(waiting) == 1)
    manager.slow_commit = 3600.0  # the second round is the only other one in flight
    second = await asyncio.wait_for(manager.handle(desk.inbound(question, user="second")), 10)
    assert second.route == "kb.answer" and not first.done()
    gates[question].set()
    assert (await asyncio.wait_for(first, 10)).route == "kb.answer"
    from storage.repositories import KnowledgeFeedback

    async with desk.core.db.read() as session:
        stats = await KnowledgeFeedback(session).stats()
    [(article, counts)] = stats.items()
    assert counts.offered == 2
