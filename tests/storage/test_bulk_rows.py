"""The round's bulk writes: many rows in one statement, the same outcome on both backends
(PostgreSQL binds one array per column, storage/arrays.py; SQLite its own statements)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from storage.db import Database
from storage.models import (
    Conversation,
    InboundReceipt,
    Message,
    OutboxRow,
    Person,
    RefusedQuery,
)
from storage.repositories import Outbox, Receipts, insert_rows

NOW = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)


async def _conversation(database: Database) -> int:
    async with database.transaction() as session:
        person = Person(display_name="Ada", created_at=NOW)
        session.add(person)
        await session.flush()
        conversation = Conversation(
            person_id=person.id,
            channel="webchat",
            thread_key="visitor:ada",
            reply_to={"visitor": "ada"},
            created_at=NOW,
            updated_at=NOW,
        )
        session.add(conversation)
        await session.flush()
        return conversation.id


def _message(conversation_id: int, n: int, **overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "conversation_id": conversation_id,
        "direction": "out",
        "channel": "webchat",
        "external_id": None,
        "author_kind": "bot",
        "author_id": None,
        "kind": "message",
        "text": f"reply {n}",
        "private": n % 2 == 0,
        "meta": {"n": n, "buttons": [{"label": "Yes", "value": f"kb:yes:{n}"}]},
        "created_at": NOW + timedelta(seconds=n),
    }
    values.update(overrides)
    return values


async def test_ids_come_back_in_the_order_of_the_rows_and_every_value_lands(
    database: Database,
) -> None:
    conversation_id = await _conversation(database)
    rows = [_message(conversation_id, n) for n in range(300)]
    async with database.transaction() as session:
        ids = await insert_rows(session, Message.__table__, rows)
    assert len(ids) == len(set(ids)) == 300
    async with database.read() as session:
        stored = {m.id: m for m in (await session.execute(select(Message))).scalars()}
    for row_id, row in zip(ids, rows, strict=True):
        message = stored[row_id]
        assert message.text == row["text"]
        assert message.meta == row["meta"]
        assert message.private is row["private"]
        assert message.created_at == row["created_at"]


async def test_columns_left_out_get_their_defaults_and_rows_without_returning(
    database: Database,
) -> None:
    async with database.transaction() as session:
        ids = await insert_rows(
            session,
            InboundReceipt.__table__,
            [{"channel": "webchat", "external_id": f"m{n}", "received_at": NOW} for n in range(3)],
        )
        none = await insert_rows(
            session,
            RefusedQuery.__table__,
            [{"query": "how do I fly", "at": NOW, "conversation_id": None}],
            returning=False,
        )
    assert none == []
    async with database.read() as session:
        statuses = (await session.execute(select(InboundReceipt.status))).scalars().all()
        refused = (await session.execute(select(func.count(RefusedQuery.id)))).scalar_one()
    assert len(ids) == 3 and statuses == ["handled"] * 3  # the model's default
    assert refused == 1


async def test_bad_rows_fail_loudly_and_leave_nothing(database: Database) -> None:
    conversation_id = await _conversation(database)
    if database.is_postgres:  # SQLite keeps any length
        # too long for varchar(8): rejected, not cut short by the array's cast
        with pytest.raises(DBAPIError, match="too long"):
            async with database.transaction() as session:
                await insert_rows(
                    session, Message.__table__, [_message(conversation_id, 1, direction="x" * 9)]
                )
    # a naive datetime is refused before it reaches the database
    with pytest.raises(Exception, match="naive datetime"):
        async with database.transaction() as session:
            await insert_rows(
                session,
                Message.__table__,
                [_message(conversation_id, 2, created_at=datetime(2026, 12, 2, 9, 30))],
            )
    # a unique violation is SQLAlchemy's IntegrityError, whichever path ran
    with pytest.raises(IntegrityError):
        async with database.transaction() as session:
            await insert_rows(
                session,
                Message.__table__,
                [_message(conversation_id, n, external_id="same") for n in range(2)],
            )
    async with database.read() as session:
        assert (await session.execute(select(func.count(Message.id)))).scalar_one() == 0


async def test_mark_sent_changes_only_rows_still_sending(database: Database) -> None:
    async with database.transaction() as session:
        outbox = Outbox(session)
        ids = await outbox.insert_many(
            [
                {
                    **Outbox.row(channel="webchat", payload={"n": n}, now=NOW),
                    "status": "sending",
                    "claimed_until": NOW + timedelta(minutes=1),
                }
                for n in range(4)
            ]
        )
    recovered = ids[3]
    async with database.transaction() as session:
        row = await session.get(OutboxRow, recovered)
        assert row is not None
        row.status = "pending"  # a lapsed claim, taken back by recovery meanwhile
    later = NOW + timedelta(seconds=5)
    async with database.transaction() as session:
        await Outbox(session).mark_sent(
            [(ids[0], "p-0", 1), (ids[1], None, 2), (recovered, "p-3", 1)], now=later
        )
    async with database.read() as session:
        rows = {r.id: r for r in (await session.execute(select(OutboxRow))).scalars()}
    first, second, untouched, left = (rows[i] for i in ids)
    assert (first.status, first.platform_id, first.attempts) == ("sent", "p-0", 1)
    assert (second.status, second.platform_id, second.attempts) == ("sent", None, 2)
    assert first.sent_at == later and first.claimed_until is None and first.last_error is None
    assert untouched.status == "sending" and untouched.sent_at is None  # not in the list
    assert left.status == "pending" and left.sent_at is None  # no longer ours: left alone


async def test_settle_many_settles_each_receipt_and_its_aliases(database: Database) -> None:
    async with database.transaction() as session:
        receipts = Receipts(session)
        fresh = await receipts.record_many(
            [("email", "a", ("a-alias",)), ("email", "b", ()), ("email", "c", ())], now=NOW
        )
    assert fresh == [True, True, True]
    async with database.transaction() as session:
        await Receipts(session).settle_many(
            [
                {
                    "channel": "email",
                    "external_ids": ["a", "a-alias"],
                    "status": "kept",
                    "reason": "no text",
                    "message_id": None,
                },
                {
                    "channel": "email",
                    "external_ids": ["b"],
                    "status": "handled",
                    "reason": None,
                    "message_id": 41,
                },
            ]
        )
    async with database.read() as session:
        rows = {
            r.external_id: (r.status, r.reason, r.message_id)
            for r in (await session.execute(select(InboundReceipt))).scalars()
        }
    assert rows == {
        "a": ("kept", "no text", None),
        "a-alias": ("kept", "no text", None),
        "b": ("handled", None, 41),
        "c": ("handled", None, None),
    }


async def test_json_columns_keep_what_json_can_say(database: Database) -> None:
    conversation_id = await _conversation(database)
    meta = {"text": "Grüße, 東京 ☕", 3: "int keys come back as strings", "n": [1, 2.5, None]}
    async with database.transaction() as session:
        [bulk] = await insert_rows(session, Message.__table__, [_message(conversation_id, 1)])
        [one] = await insert_rows(
            session, Message.__table__, [_message(conversation_id, 2, meta=meta)]
        )
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None
        conversation.notes = meta  # the ORM's own UPDATE, through the same serializer
    async with database.read() as session:
        stored = await session.get(Message, one)
        conversation = await session.get(Conversation, conversation_id)
    expected = {"text": "Grüße, 東京 ☕", "3": "int keys come back as strings", "n": [1, 2.5, None]}
    assert stored is not None and stored.meta == expected
    assert conversation is not None and conversation.notes == expected
    assert bulk != one


async def test_identical_rows_and_rows_sharing_most_values(database: Database) -> None:
    conversation_id = await _conversation(database)
    same = _message(conversation_id, 1)
    async with database.transaction() as session:
        twins = await insert_rows(session, Message.__table__, [same, same, same])
        # rows that differ in a column or two share the rest: those are bound once
        mixed = await insert_rows(
            session,
            Message.__table__,
            [{**same, "text": f"t{n}"} for n in range(4)] + [{**same, "meta": {}}],
        )
    assert len(set(twins)) == 3 and len(set(mixed)) == 5
    async with database.read() as session:
        stored = {m.id: m for m in (await session.execute(select(Message))).scalars()}
    assert [stored[i].text for i in mixed] == ["t0", "t1", "t2", "t3", "reply 1"]
    assert [stored[i].meta for i in mixed] == [same["meta"]] * 4 + [{}]
    assert {stored[i].created_at for i in twins + mixed} == {same["created_at"]}


async def test_a_single_statement_runs_without_a_transaction_around_it(
    database: Database,
) -> None:
    if database.is_postgres:
        async with database.single_statement() as session:
            # autocommit: each statement is its own transaction (ids differ)
            first = (await session.execute(text("SELECT txid_current()"))).scalar_one()
            second = (await session.execute(text("SELECT txid_current()"))).scalar_one()
        assert first != second
        async with database.transaction() as session:
            first = (await session.execute(text("SELECT txid_current()"))).scalar_one()
            second = (await session.execute(text("SELECT txid_current()"))).scalar_one()
        assert first == second  # and a transaction is still one
    async with database.transaction() as session:
        ids = await Outbox(session).insert_many(
            [{**Outbox.row(channel="webchat", payload={}, now=NOW), "status": "sending"}]
        )
    async with database.single_statement() as session:
        await Outbox(session).mark_sent([(ids[0], "p-1", 1)], now=NOW)
    async with database.read() as session:
        row = await session.get(OutboxRow, ids[0])
    assert row is not None and row.status == "sent"
    # ORM changes would need a flush that never comes: refused, not dropped
    if database.is_postgres:
        with pytest.raises(RuntimeError, match="need transaction"):
            async with database.single_statement() as session:
                session.add(RefusedQuery(query="q", at=NOW))
