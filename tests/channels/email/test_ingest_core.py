"""The core's side of email ingest without IMAP, on SQLite and PostgreSQL: the receipt and
its aliases in one statement, and the loop guard for a sender seen for the first time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from bot.main import Core
from bot.types import Inbound
from channels.email.classify import classify
from channels.email.convert import inbound_from_mail
from channels.email.parse import parse_mail
from storage.db import Database
from storage.models import Alert, InboundReceipt, Message, OutboxRow, Person
from storage.repositories import Receipts
from tests.channels.email.desk import DESK, mail, make_core


def _inbound(core: Core, raw: bytes, uid: int) -> Inbound:
    parsed = parse_mail(raw)
    return inbound_from_mail(
        parsed,
        classify(parsed, own_addresses=[DESK]),
        mailbox="INBOX",
        uidvalidity=7,
        uid=uid,
        secret=core.settings.ensure_secret_key(),
    )


async def _receipts(database: Database) -> dict[str, str]:
    async with database.read() as session:
        rows = await session.execute(select(InboundReceipt.external_id, InboundReceipt.status))
        return {external_id: status for external_id, status in rows.all()}


async def test_receipt_and_aliases_are_recorded_together_and_a_seen_alias_wins(
    database: Database,
) -> None:
    now = datetime.now(UTC)
    async with database.transaction() as session:
        receipts = Receipts(session)
        assert await receipts.record("email", "imap:INBOX:7:1", alt_ids=("msgid:a", "h:1"), now=now)
        # the same mail under a new UID: its receipt is new, its Message-ID is not
        assert not await receipts.record("email", "imap:INBOX:7:2", alt_ids=("msgid:a",), now=now)
        # the same id twice in one call counts as seen, as it did one INSERT at a time
        assert not await receipts.record("email", "imap:INBOX:7:3", alt_ids=("h:3", "h:3"), now=now)
        # the receipt itself seen before: nothing more is written
        assert not await receipts.record("email", "imap:INBOX:7:1", alt_ids=("msgid:z",), now=now)
        assert await receipts.record("email", "imap:INBOX:7:4", now=now)
    assert await _receipts(database) == {
        "imap:INBOX:7:1": "handled",
        "msgid:a": "handled",
        "h:1": "handled",
        "imap:INBOX:7:2": "duplicate",
        "imap:INBOX:7:3": "duplicate",
        "h:3": "handled",
        "imap:INBOX:7:4": "handled",
    }


async def test_a_refetched_mail_under_a_new_uid_is_a_duplicate(
    database: Database, tmp_path: Path
) -> None:
    core = make_core(database, tmp_path)
    raw = mail("", message_id="refetch-1")
    first = await core.manager.handle(_inbound(core, raw, 1))
    again = await core.manager.handle(_inbound(core, raw, 2))
    assert not first.duplicate and again.duplicate
    receipts = await _receipts(database)
    assert receipts["imap:INBOX:7:1"] == "handled"
    assert receipts["imap:INBOX:7:2"] == "duplicate"
    assert receipts["msgid:refetch-1@corp.test"] == "handled"


async def test_a_first_time_sender_is_still_held_to_the_reply_cap(
    database: Database, tmp_path: Path
) -> None:
    # the guard skips counting earlier replies to a person created in this transaction
    # (there are none); the cap itself must still apply
    core = make_core(database, tmp_path, auto_reply_cap_per_hour=0)
    result = await core.manager.handle(_inbound(core, mail("", message_id="cap-0"), 1))
    assert not result.duplicate and result.outbox_ids == ()
    async with database.read() as session:
        alerts = list((await session.scalars(select(Alert.kind))).all())
        outbox = (await session.execute(select(func.count()).select_from(OutboxRow))).scalar()
        people = (await session.execute(select(func.count()).select_from(Person))).scalar()
    assert alerts == ["mail_loop"] and outbox == 0 and people == 1


async def test_a_returning_sender_counts_replies_across_conversations(
    database: Database, tmp_path: Path
) -> None:
    core = make_core(database, tmp_path, auto_reply_cap_per_hour=2)
    replied = []
    for uid in range(1, 5):
        raw = mail(f"Subject: printer jam {uid}", f"The printer on floor {uid} jams again.")
        result = await core.manager.handle(_inbound(core, raw, uid))
        replied.append(len(result.outbox_ids))
    assert replied[0] >= 1
    assert sum(replied) <= 2
    async with database.read() as session:
        out = select(func.count()).select_from(Message).where(Message.direction == "out")
        assert (await session.execute(out)).scalar() == sum(replied)


async def test_a_batch_archive_claim_is_won_once_per_mail(
    database: Database, tmp_path: Path
) -> None:
    core = make_core(database, tmp_path)
    ids = []
    for uid in range(1, 4):
        inbound = _inbound(core, mail("", message_id=f"claim-{uid}"), uid)
        await core.manager.handle(inbound)
        ids.append(inbound.external_id)
    # another poller moved the first mail already
    assert await core.manager.claim_archive("email", ids[0])
    assert await core.manager.claim_archives("email", [*ids, "imap:INBOX:7:99"]) == set(ids[1:])
    assert await core.manager.claim_archives("email", ids) == set()
    assert await core.manager.claim_archives("email", []) == set()
