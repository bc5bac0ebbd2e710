"""The outbox dispatcher: retry with backoff, a visible failed state, rate limits."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import event, select

from bot.errors import PermanentError, RateLimited
from bot.outbox import Handed
from bot.types import Delivery, Inbound, Outbound, Sender
from storage.models import Alert, OutboxRow
from tests.conftest import Desk, until


class Flaky:
    """A channel whose next sends raise what the test queues up."""

    kind = "flaky"

    def __init__(self) -> None:
        self.errors: list[Exception] = []
        self.sent: list[Outbound] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, outbound: Outbound) -> Delivery:
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append(outbound)
        return Delivery(platform_id=f"flaky-{len(self.sent)}")


async def _enqueue(desk: Desk, channel: str = "flaky") -> int:
    from storage.repositories import Outbox

    async with desk.core.db.transaction() as session:
        row = await Outbox(session).enqueue(
            channel=channel,
            payload=Outbound(channel=channel, address={"to": "x"}, markdown="hello").to_json(),
            now=desk.clock.now(),
        )
        return row.id


async def _row(desk: Desk, row_id: int) -> OutboxRow:
    async with desk.core.db.read() as session:
        row = await session.get(OutboxRow, row_id)
        assert row is not None
        return row


async def test_transient_errors_are_retried_with_backoff(desk: Desk) -> None:
    flaky = Flaky()
    desk.core.registry.add(flaky)
    flaky.errors = [ConnectionError("reset"), ConnectionError("reset")]
    row_id = await _enqueue(desk)
    await desk.core.dispatcher.run_once()
    row = await _row(desk, row_id)
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.next_attempt_at > desk.clock.now()
    # not due yet: nothing happens
    assert await desk.core.dispatcher.run_once() == 0
    desk.clock.advance(seconds=10)
    await desk.core.dispatcher.run_once()
    desk.clock.advance(seconds=10)
    await desk.core.dispatcher.run_once()
    row = await _row(desk, row_id)
    assert (row.status, row.attempts, row.platform_id) == ("sent", 3, "flaky-1")
    assert len(flaky.sent) == 1


async def test_gives_up_after_max_attempts_visibly(desk: Desk) -> None:
    flaky = Flaky()
    desk.core.registry.add(flaky)
    flaky.errors = [ConnectionError("down")] * 20
    row_id = await _enqueue(desk)
    for _ in range(desk.core.dispatcher.policy.max_attempts):
        await desk.core.dispatcher.run_once()
        desk.clock.advance(seconds=700)
    row = await _row(desk, row_id)
    assert row.status == "failed"
    assert row.attempts == desk.core.dispatcher.policy.max_attempts
    async with desk.core.db.read() as session:
        alerts = list((await session.execute(select(Alert))).scalars())
    assert [a.kind for a in alerts] == ["delivery_failed"]


async def test_permanent_error_fails_at_once(desk: Desk) -> None:
    flaky = Flaky()
    desk.core.registry.add(flaky)
    flaky.errors = [PermanentError("550 no such user")]
    row_id = await _enqueue(desk)
    await desk.core.dispatcher.run_once()
    row = await _row(desk, row_id)
    assert (row.status, row.attempts) == ("failed", 1)
    assert "550" in (row.last_error or "")


async def test_rate_limit_pauses_the_channel_without_spending_attempts(desk: Desk) -> None:
    flaky = Flaky()
    desk.core.registry.add(flaky)
    flaky.errors = [RateLimited("429", retry_after=7)]
    first = await _enqueue(desk)
    second = await _enqueue(desk)
    await desk.core.dispatcher.run_once()
    rows = [await _row(desk, first), await _row(desk, second)]
    assert all(r.status == "pending" and r.attempts == 0 for r in rows)
    assert all(r.next_attempt_at >= desk.clock.now() + timedelta(seconds=6) for r in rows)
    desk.clock.advance(seconds=6)
    assert await desk.core.dispatcher.run_once() == 0  # still paused
    desk.clock.advance(seconds=2)
    await desk.core.dispatcher.run_once()
    assert len(flaky.sent) == 2


async def test_unknown_channel_fails_visibly(desk: Desk) -> None:
    row_id = await _enqueue(desk, channel="nowhere")
    await desk.core.dispatcher.run_once()
    assert (await _row(desk, row_id)).status == "failed"


async def test_token_bucket_limits_a_channel(desk: Desk) -> None:
    flaky = Flaky()
    flaky.rate_per_second = 200.0  # type: ignore[attr-defined]
    flaky.rate_burst = 1.0  # type: ignore[attr-defined]
    desk.core.registry.add(flaky)
    for _ in range(5):
        await _enqueue(desk)
    import time

    started = time.monotonic()
    await desk.core.dispatcher.run_once()
    # 5 sends at 200/s with a burst of 1 need at least 4 refills of 5 ms
    assert time.monotonic() - started >= 0.018
    assert len(flaky.sent) == 5


def test_backoff_grows_with_jitter_and_respects_retry_after(desk: Desk) -> None:
    dispatcher = desk.core.dispatcher
    delays = [dispatcher.backoff(n) for n in range(1, 8)]
    ceilings = [min(0.05, 0.01 * 2 ** (n - 1)) for n in range(1, 8)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert dispatcher.backoff(1, retry_after=30) == 30


class Pooled:
    """A channel with several sends in flight at once, like the SMTP connection pool."""

    kind = "pooled"
    send_concurrency = 3

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0
        self.order: list[tuple[int | None, str]] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, outbound: Outbound) -> Delivery:
        import asyncio

        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        # the first reply of each conversation is the slow one: a later one overtaking
        # it would show up in ``order``
        await asyncio.sleep(0.02 if outbound.markdown.endswith("#0") else 0.001)
        self.in_flight -= 1
        self.order.append((outbound.conversation_id, outbound.markdown))
        return Delivery(platform_id=f"pooled-{len(self.order)}")


async def test_concurrent_channel_sends_in_parallel_but_keeps_a_conversation_in_order(
    desk: Desk,
) -> None:
    from storage.repositories import Outbox

    pooled = Pooled()
    desk.core.registry.add(pooled)
    async with desk.core.db.transaction() as session:
        for n in range(4):
            for conversation in (1, 2, 3, 4, 5):
                await Outbox(session).enqueue(
                    channel="pooled",
                    payload=Outbound(
                        channel="pooled",
                        address={"to": "x"},
                        markdown=f"c{conversation} #{n}",
                        conversation_id=conversation,
                    ).to_json(),
                    now=desk.clock.now(),
                )
    assert await desk.core.dispatcher.run_once() == 20
    assert pooled.most_in_flight == 3  # bounded by send_concurrency, and actually parallel
    for conversation in (1, 2, 3, 4, 5):
        sent = [text for conv, text in pooled.order if conv == conversation]
        assert sent == [f"c{conversation} #{n}" for n in range(4)]
    async with desk.core.db.read() as session:
        statuses = (await session.execute(select(OutboxRow.status))).scalars().all()
    assert statuses == ["sent"] * 20


async def test_running_dispatcher_delivers_woken_rows_and_polls_for_the_rest(desk: Desk) -> None:
    """Rows this process queued are sent at once (wake); rows queued elsewhere (another
    node, no wake) by the next poll; a partial batch does not end the loop early."""
    import asyncio

    flaky = Flaky()
    desk.core.registry.add(flaky)
    await desk.core.dispatcher.start()
    try:
        for _ in range(3):
            await _enqueue(desk)
        desk.core.dispatcher.wake()
        async with asyncio.timeout(5):
            while len(flaky.sent) < 3:
                await asyncio.sleep(0.005)
        await _enqueue(desk)  # no wake: as if another node had queued it
        async with asyncio.timeout(5):  # poll_seconds is 0.05 in the test policy
            while len(flaky.sent) < 4:
                await asyncio.sleep(0.005)
    finally:
        await desk.core.dispatcher.stop()


# handed over: a turn's replies go in claimed and are sent without a claiming query ----------


class Reconciles(Flaky):
    kind = "reconciles"

    async def reconcile(self, outbound: Outbound) -> Delivery | None:
        return None


class Gated(Flaky):
    """Sends only once the test opens the gate."""

    kind = "gated"

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def send(self, outbound: Outbound) -> Delivery:
        await self.gate.wait()
        return await super().send(outbound)


@contextmanager
def outbox_updates(desk: Desk) -> Iterator[list[str]]:
    """The UPDATE statements run on the outbox table meanwhile."""
    seen: list[str] = []

    def record(_c: object, _cur: object, statement: str, *_: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE OUTBOX"):
            seen.append(" ".join(statement.split()))

    engine = desk.core.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def _ask(desk: Desk, channel: str, *users: str) -> list[int]:
    """Each user says "thanks" on ``channel`` at once; the outbox ids of the replies."""
    results = await asyncio.gather(
        *(
            desk.core.manager.handle(
                Inbound(
                    channel=channel,
                    external_id=f"{channel}-{user}",
                    sender=Sender(external_id=user),
                    text="thanks",
                    thread_key=f"{channel}:{user}",
                )
            )
            for user in users
        )
    )
    return [row_id for result in results for row_id in result.outbox_ids]


def _is_claim(statement: str) -> bool:
    return "SET status=" in statement.replace(" = ", "=") and "SELECT" in statement


def _is_stamp(statement: str) -> bool:
    return "send_started_at=" in statement.replace(" = ", "=") and "status=" not in statement


async def test_a_serving_dispatcher_sends_the_replies_handed_over_without_claiming(
    desk: Desk,
) -> None:
    plain, reconciling = Flaky(), Reconciles()
    desk.core.registry.add(plain)
    desk.core.registry.add(reconciling)
    dispatcher = desk.core.dispatcher
    dispatcher.policy = dataclasses.replace(dispatcher.policy, poll_seconds=60)
    await dispatcher.start()
    await until(dispatcher.idle.is_set)  # its first sweep is over; the next in a minute
    try:
        with outbox_updates(desk) as updates:
            ids = await _ask(desk, "flaky", "ann", "bob") + await _ask(desk, "reconciles", "cy")
            await until(lambda: len(plain.sent) == 2 and len(reconciling.sent) == 1)
    finally:
        await desk.core.dispatcher.stop()
    assert not any(_is_claim(u) for u in updates)
    # only the rows of the channel that cannot reconcile are stamped before the send
    assert len([u for u in updates if _is_stamp(u)]) == 1
    for row_id in ids:
        row = await _row(desk, row_id)
        assert (row.status, row.attempts, row.claimed_until) == ("sent", 1, None)


async def test_handed_rows_go_in_claimed_and_stamped_when_the_channel_reconciles(
    desk: Desk,
) -> None:
    for channel in (Gated(), Reconciles()):
        desk.core.registry.add(channel)
    gated = desk.core.registry.get("gated")
    assert isinstance(gated, Gated)
    dispatcher = desk.core.dispatcher
    dispatcher.hand = lambda rows: None  # type: ignore[method-assign]  # kept from it
    await dispatcher.start()
    try:
        [plain_id] = await _ask(desk, "gated", "dee")
        [reconciled_id] = await _ask(desk, "reconciles", "eve")
    finally:
        await dispatcher.stop()
    plain, reconciled = await _row(desk, plain_id), await _row(desk, reconciled_id)
    assert (plain.status, plain.send_started_at) == ("sending", None)
    assert reconciled.status == "sending" and reconciled.send_started_at is not None
    assert plain.claimed_until is not None and reconciled.claimed_until is not None


async def test_a_stopped_dispatcher_leaves_new_rows_for_any_node(desk: Desk) -> None:
    flaky = Flaky()
    desk.core.registry.add(flaky)
    [row_id] = await _ask(desk, "flaky", "fay")  # no dispatcher serving here
    row = await _row(desk, row_id)
    assert (row.status, row.claimed_until) == ("pending", None)
    await desk.core.dispatcher.drain()
    assert (await _row(desk, row_id)).status == "sent"


async def test_stopping_gives_back_the_handed_rows_not_sent_yet(desk: Desk) -> None:
    gated = Gated()
    desk.core.registry.add(gated)
    dispatcher = desk.core.dispatcher
    dispatcher.policy = dataclasses.replace(dispatcher.policy, batch_size=1)
    await dispatcher.start()
    try:
        ids = await _ask(desk, "gated", "gil", "hal")
        await asyncio.sleep(0.1)  # the first is being sent (held at the gate)
    finally:
        await dispatcher.stop(grace=0.1)  # that send does not end in time: cut off
    first, second = await _row(desk, ids[0]), await _row(desk, ids[1])
    assert first.status == "sending"  # cut off mid-send: its lease decides
    assert (second.status, second.claimed_until) == ("pending", None)
    gated.gate.set()
    await dispatcher.drain()
    assert (await _row(desk, ids[1])).status == "sent"


async def test_stopping_lets_the_batch_in_hand_finish(desk: Desk) -> None:
    gated = Gated()
    desk.core.registry.add(gated)
    dispatcher = desk.core.dispatcher
    await dispatcher.start()
    [row_id] = await _ask(desk, "gated", "jo")
    await asyncio.sleep(0.1)  # being sent, held at the gate
    stopping = asyncio.create_task(dispatcher.stop(grace=10))
    await asyncio.sleep(0.1)
    assert not stopping.done()  # waiting for the send, not cutting it off
    [late] = await _ask(desk, "gated", "kim")  # meanwhile: left for any node to claim
    gated.gate.set()
    await stopping
    assert (await _row(desk, row_id)).status == "sent"
    row = await _row(desk, late)
    assert (row.status, row.claimed_until) == ("pending", None)


async def test_a_handed_row_past_its_lease_is_left_to_recovery(desk: Desk) -> None:
    flaky = Flaky()
    desk.core.registry.add(flaky)
    dispatcher = desk.core.dispatcher
    held: list[Handed] = []
    dispatcher.hand = held.extend  # type: ignore[method-assign]
    await dispatcher.start()
    try:
        [row_id] = await _ask(desk, "flaky", "ivy")
    finally:
        await dispatcher.stop()
    del dispatcher.hand  # type: ignore[method-assign]
    desk.clock.advance(seconds=dispatcher.policy.lease_seconds + 1)
    dispatcher.hand(held)
    assert await dispatcher.run_once() == 0  # not sent from memory: its claim ran out
    assert await dispatcher.recover_stale(desk.clock.now()) == 1  # never started: pending
    await dispatcher.drain()
    assert (await _row(desk, row_id)).status == "sent"
    assert len(flaky.sent) == 1


# channels that send in batches ----------------------------------------------------------


class Batches(Flaky):
    """Sends a batch in one call; an error queued for a message's text is its result."""

    kind = "batches"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []
        self.failing: dict[str, Exception] = {}

    async def send_batch(self, outbounds: Sequence[Outbound]) -> list[Delivery | Exception]:
        self.calls.append([o.markdown for o in outbounds])
        if self.errors:
            raise self.errors.pop(0)
        results: list[Delivery | Exception] = []
        for outbound in outbounds:
            failure = self.failing.get(outbound.markdown)
            if failure is not None:
                results.append(failure)
            else:
                self.sent.append(outbound)
                results.append(Delivery(platform_id=f"b-{outbound.outbox_id}"))
        return results


async def _enqueue_text(desk: Desk, text: str, channel: str = "batches") -> int:
    from storage.repositories import Outbox

    async with desk.core.db.transaction() as session:
        row = await Outbox(session).enqueue(
            channel=channel,
            payload=Outbound(channel=channel, address={"to": "x"}, markdown=text).to_json(),
            now=desk.clock.now(),
        )
        return row.id


async def test_a_batching_channel_gets_one_call_and_each_row_its_own_result(desk: Desk) -> None:
    batches = Batches()
    desk.core.registry.add(batches)
    batches.failing = {"two": ConnectionError("reset"), "three": PermanentError("550 no")}
    ids = [await _enqueue_text(desk, text) for text in ("one", "two", "three", "four")]
    await desk.core.dispatcher.run_once()
    assert batches.calls == [["one", "two", "three", "four"]]
    rows = [await _row(desk, row_id) for row_id in ids]
    assert [(r.status, r.attempts) for r in rows] == [
        ("sent", 1),
        ("pending", 1),  # transient: retried later
        ("failed", 1),  # permanent: given up visibly
        ("sent", 1),
    ]
    assert rows[0].platform_id == f"b-{ids[0]}"


async def test_a_batch_that_raises_fails_every_row_the_same_way(desk: Desk) -> None:
    batches = Batches()
    desk.core.registry.add(batches)
    batches.errors = [RateLimited("429", retry_after=5)]
    ids = [await _enqueue_text(desk, text) for text in ("a", "b")]
    await desk.core.dispatcher.run_once()
    rows = [await _row(desk, row_id) for row_id in ids]
    assert all((r.status, r.attempts) == ("pending", 0) for r in rows)  # no attempt spent
    desk.clock.advance(seconds=3)
    assert await desk.core.dispatcher.run_once() == 0  # the channel is paused
    desk.clock.advance(seconds=3)
    await desk.core.dispatcher.run_once()
    assert [o.markdown for o in batches.sent] == ["a", "b"]
    assert len(batches.calls) == 2


async def test_the_next_batch_goes_out_while_the_one_before_is_settled(desk: Desk) -> None:
    plain = Flaky()
    desk.core.registry.add(plain)
    dispatcher = desk.core.dispatcher
    dispatcher.policy = dataclasses.replace(dispatcher.policy, poll_seconds=60)
    gate = asyncio.Event()
    settle = dispatcher._settle
    settling: list[list[int]] = []

    async def held(outcomes, *args):  # type: ignore[no-untyped-def]
        settling.append([o.row_id for o in outcomes])
        if len(settling) == 1:
            await gate.wait()  # the first batch's "sent" UPDATE is slow
        await settle(outcomes, *args)

    dispatcher._settle = held  # type: ignore[method-assign]
    await dispatcher.start()
    await until(dispatcher.idle.is_set)
    try:
        first = await _ask(desk, "flaky", "ann")
        await until(lambda: len(plain.sent) == 1 and len(settling) == 1)
        second = await _ask(desk, "flaky", "bob")
        # sent while the first batch is still being settled...
        await until(lambda: len(plain.sent) == 2)
        assert [(await _row(desk, i)).status for i in first + second] == ["sending"] * 2
        # ...and settled after it, in the order they went out
        await asyncio.sleep(0.1)
        assert len(settling) == 1
        gate.set()
        await until(lambda: len(settling) == 2)
        await until(dispatcher.idle.is_set)
        assert [(await _row(desk, i)).status for i in first + second] == ["sent"] * 2
    finally:
        gate.set()
        await dispatcher.stop()


async def test_a_stop_lets_the_batch_being_settled_finish(desk: Desk) -> None:
    plain = Flaky()
    desk.core.registry.add(plain)
    dispatcher = desk.core.dispatcher
    dispatcher.policy = dataclasses.replace(dispatcher.policy, poll_seconds=60)
    settle = dispatcher._settle
    started = asyncio.Event()

    async def slow(*args):  # type: ignore[no-untyped-def]
        started.set()
        await asyncio.sleep(0.2)
        await settle(*args)

    dispatcher._settle = slow  # type: ignore[method-assign]
    await dispatcher.start()
    await until(dispatcher.idle.is_set)
    [row_id] = await _ask(desk, "flaky", "ann")
    await asyncio.wait_for(started.wait(), 10)
    await dispatcher.stop()
    assert (await _row(desk, row_id)).status == "sent"
