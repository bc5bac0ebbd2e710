"""Repositories: every query the bot runs lives here, behind intention-revealing names.

They take the caller's ``AsyncSession``; the bot owns the transaction. Inserts that can
race (the same inbound twice, a person's first two messages at once) use the database's
own ``ON CONFLICT DO NOTHING`` so the loser sees the winner's row instead of an error.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Row,
    String,
    TextClause,
    TextualSelect,
    and_,
    any_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from storage import arrays
from storage.db import before_commit
from storage.models import (
    Agent,
    Alert,
    ArticleStats,
    Conversation,
    Identity,
    InboundReceipt,
    Message,
    Outage,
    OutboxRow,
    Person,
    RefusedQuery,
    Subscription,
    Ticket,
    TicketCounter,
    TicketEvent,
)


@dataclass(slots=True, eq=False)
class MessageRow:
    """A message the core writes itself (a turn's inbound message and replies): the
    columns of one ``messages`` row, and its id once inserted. Plain attributes, where
    an ORM object would track every one it is given."""

    conversation_id: int
    direction: str
    channel: str
    external_id: str | None
    author_kind: str
    author_id: int | None
    kind: str
    text: str
    private: bool
    meta: dict[str, Any]
    created_at: datetime
    id: int | None = None

    def values(self) -> dict[str, Any]:
        """The row's columns, for an INSERT."""
        return {
            "conversation_id": self.conversation_id,
            "direction": self.direction,
            "channel": self.channel,
            "external_id": self.external_id,
            "author_kind": self.author_kind,
            "author_id": self.author_id,
            "kind": self.kind,
            "text": self.text,
            "private": self.private,
            "meta": self.meta,
            "created_at": self.created_at,
        }


@functools.cache
def _upsert(
    model: Any,
    columns: tuple[str, ...],
    conflict: tuple[str, ...],
    action: str,
    returning: str | None = None,
) -> TextClause | TextualSelect:
    """``INSERT … ON CONFLICT (…) <action> [RETURNING …]`` as one cacheable statement.

    SQLAlchemy 2.0 cannot cache the dialects' ``insert().on_conflict_*()`` constructs, so
    they were compiled again on every call (several per inbound message). The syntax is
    the same on SQLite (3.24+) and PostgreSQL; the bind parameters keep the columns'
    types, so dates and JSON are converted exactly as the ORM converts them.
    """
    table = model.__table__
    sql = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + c for c in columns)}) "
        f"ON CONFLICT ({', '.join(conflict)}) {action}"
    )
    if returning is not None:
        sql += f" RETURNING {returning}"
    stmt = text(sql).bindparams(*(bindparam(c, type_=table.c[c].type) for c in columns))
    return stmt.columns(table.c[returning]) if returning is not None else stmt


def _defaults(table: Any, given: dict[str, Any]) -> dict[str, Any]:
    """The Python-side column defaults the ORM would have filled in for a text insert
    (scalars and callables; the models declare no SQL-expression defaults)."""
    out: dict[str, Any] = {}
    for column in table.columns:
        default = column.default
        if column.name in given or default is None or column.primary_key:
            continue
        if default.is_callable:
            out[column.name] = default.arg(None)
        elif default.is_scalar:
            out[column.name] = default.arg
        else:
            raise TypeError(f"{table.name}.{column.name}: a SQL default needs the ORM insert")
    return out


async def insert_ignore(
    session: AsyncSession, model: Any, values: dict[str, Any], conflict: Sequence[str]
) -> int | None:
    """Insert a row unless one with the same ``conflict`` columns exists; its id or None."""
    table = model.__table__
    pk = next(iter(table.primary_key.columns)).name
    values = {**_defaults(table, values), **values}
    stmt = _upsert(model, tuple(values), tuple(conflict), "DO NOTHING", pk)
    row = (await session.execute(stmt, values)).first()
    return None if row is None else row[0]


@functools.cache
def _insert_entity(model: Any, columns: tuple[str, ...], conflict: tuple[str, ...]) -> Any:
    """``INSERT … ON CONFLICT (…) DO NOTHING RETURNING <every column>`` loaded as the
    model's entity, so a row just created needs no SELECT to become an ORM object."""
    textual = _upsert(model, columns, conflict, "DO NOTHING")
    assert isinstance(textual, TextClause)
    returning = ", ".join(c.name for c in model.__table__.columns)
    stmt = text(f"{textual.text} RETURNING {returning}").bindparams(
        *(bindparam(c, type_=model.__table__.c[c].type) for c in columns)
    )
    return select(model).from_statement(stmt.columns(*model.__table__.columns))


async def insert_entity(
    session: AsyncSession, model: Any, values: dict[str, Any], conflict: Sequence[str]
) -> Any | None:
    """Insert a row unless one with the same ``conflict`` columns exists: the new row as a
    persistent ORM object (in the session, fully loaded), or None when it existed."""
    values = {**_defaults(model.__table__, values), **values}
    stmt = _insert_entity(model, tuple(values), tuple(conflict))
    return (await session.execute(stmt, values)).scalar_one_or_none()


_STAGED_ROWS_KEY = "deskbot.staged_rows"


def stage_row(session: AsyncSession, table: Any, row: dict[str, Any]) -> None:
    """Keep a row to insert with :func:`write_staged_rows`: rows nobody reads back in the
    same transaction, written a table at a time in one INSERT. A value may be a
    ticket not flushed yet; its ``id`` is read when the rows are written."""
    staged: dict[Any, list[dict[str, Any]]] | None = session.info.get(_STAGED_ROWS_KEY)
    if staged is None:
        staged = session.info[_STAGED_ROWS_KEY] = {}
        before_commit(session, lambda: write_staged_rows(session))
    staged.setdefault(table, []).append(row)


async def write_staged_rows(session: AsyncSession) -> None:
    """Insert what :func:`stage_row` kept, after flushing the session (so the objects the
    rows name have their ids). ``Database.transaction`` calls it before every commit."""
    staged: dict[Any, list[dict[str, Any]]] | None = session.info.pop(_STAGED_ROWS_KEY, None)
    if not staged:
        return
    await session.flush()
    for table, rows in staged.items():
        values = [{k: _resolved(v) for k, v in row.items()} for row in rows]
        await insert_rows(session, table, values, returning=False)


def _resolved(value: Any) -> Any:
    """A ticket's id (it has one once flushed), any other value as it is."""
    return value.id if isinstance(value, Ticket) else value


@functools.cache
def _insert_rows(
    postgres: bool,
    model: Any,
    varying: tuple[str, ...],
    shared: tuple[str, ...],
    count: int,
    conflict: tuple[str, ...],
    returning: tuple[str, ...] | None,
) -> Any:
    """``INSERT`` of several rows ``[ON CONFLICT (…) DO NOTHING] RETURNING`` the columns
    ``returning``, or every column loaded as the model's entities (``None``). ``varying``
    columns differ per row, ``shared`` ones are bound once. PostgreSQL: one array per
    varying column, unnested (the same text for any number of rows); SQLite: a VALUES
    list of ``count`` rows."""
    table = model.__table__
    binds = [bindparam(c, type_=table.c[c].type) for c in shared]
    if postgres:
        arrays = ", ".join(f":{c}" for c in varying)
        picked = ", ".join([f"r.{c}" for c in varying] + [f":{c}" for c in shared])
        source = f"SELECT {picked} FROM unnest({arrays}) AS r({', '.join(varying)})"
        binds += [bindparam(c, type_=ARRAY(table.c[c].type)) for c in varying]
    else:
        source = "VALUES " + ", ".join(
            "(" + ", ".join([f":{c}__{i}" for c in varying] + [f":{c}" for c in shared]) + ")"
            for i in range(count)
        )
        binds += [
            bindparam(f"{c}__{i}", type_=table.c[c].type) for i in range(count) for c in varying
        ]
    sql = f"INSERT INTO {table.name} ({', '.join(varying + shared)}) {source}"
    if conflict:
        sql += f" ON CONFLICT ({', '.join(conflict)}) DO NOTHING"
    columns = [table.c[c] for c in returning] if returning else list(table.columns)
    sql += " RETURNING " + ", ".join(c.name for c in columns)
    stmt = text(sql).bindparams(*binds).columns(*columns)
    return stmt if returning else select(model).from_statement(stmt)


async def _insert_many(
    session: AsyncSession,
    model: Any,
    rows: Sequence[dict[str, Any]],
    *,
    shared: dict[str, Any],
    conflict: Sequence[str],
    returning: tuple[str, ...] | None,
) -> Any:
    """Run :func:`_insert_rows` for ``rows`` (the same columns each; ``shared`` and the
    model's Python-side defaults complete them): its result."""
    varying = tuple(rows[0])
    shared = {**_defaults(model.__table__, {**rows[0], **shared}), **shared}
    postgres = _is_postgres(session)
    count = 0 if postgres else len(rows)
    stmt = _insert_rows(postgres, model, varying, tuple(shared), count, tuple(conflict), returning)
    params = dict(shared)
    if postgres:
        for column in varying:
            params[column] = [row[column] for row in rows]
    else:
        for i, row in enumerate(rows):
            for column in varying:
                params[f"{column}__{i}"] = row[column]
    return await session.execute(stmt, params)


async def insert_entities(
    session: AsyncSession,
    model: Any,
    rows: Sequence[dict[str, Any]],
    *,
    shared: dict[str, Any],
    conflict: Sequence[str] = (),
) -> list[Any]:
    """Insert ``rows`` in one statement, skipping those whose ``conflict`` columns exist
    already: the rows inserted, as persistent ORM objects, in no promised order."""
    if not rows:
        return []
    result = await _insert_many(
        session, model, rows, shared=shared, conflict=conflict, returning=None
    )
    return list(result.scalars())


# Queries run for nearly every inbound message, built once: a statement built per call
# costs its construction and its cache key again each time (a large share of a message's
# CPU); these reuse both.
_CONVERSATION_BY_THREAD = select(Conversation).where(
    Conversation.channel == bindparam("channel"),
    Conversation.thread_key == bindparam("thread_key"),
)
_ACTIVE_OUTAGES = (
    select(Outage)
    .where(Outage.status == "active")
    .order_by(Outage.id.desc())
    # nothing a turn changes decides an outage: flushing its pending conversation
    # changes here would cost an extra UPDATE before the one at the end of the turn
    .execution_options(autoflush=False)
)
_ACTIVE_OUTAGES_KEY = "deskbot.active_outages"

# receipts are written with text statements and never loaded in the handling session:
# there is nothing in it for the ORM to synchronise
_RECEIPTS_NAMED = (
    InboundReceipt.channel == bindparam("b_channel"),
    InboundReceipt.external_id.in_(bindparam("b_external_ids", expanding=True)),
)
_CLAIM_ARCHIVES = (
    update(InboundReceipt)
    .where(
        *_RECEIPTS_NAMED,
        or_(
            InboundReceipt.archived_at.is_(None),
            InboundReceipt.archived_at < bindparam("b_stale"),
        ),
    )
    .values(archived_at=bindparam("b_now"))
    .returning(InboundReceipt.external_id)
    .execution_options(synchronize_session=False)
)
# a turn's stored replies were flushed by whatever stored them, and the ones it is about
# to send are counted by the caller: flushing its pending conversation changes here
# would cost an UPDATE before the one at the end of the turn
_BOT_REPLIES_TO_PERSON_SINCE = (
    select(func.count(Message.id))
    .join(Conversation, Conversation.id == Message.conversation_id)
    .where(
        Conversation.person_id == bindparam("person_id"),
        Message.direction == "out",
        Message.author_kind == "bot",
        Message.created_at >= bindparam("since"),
    )
    .execution_options(autoflush=False)
)


# Batched forms, for the conversation manager's rounds (several inbound messages in one
# transaction). On PostgreSQL a list is one array parameter (``= ANY($1)``, ``unnest``), so
# the statement text is the same however many rows a round has and asyncpg prepares it
# once; SQLite gets an expanding IN or a multi-row VALUES, cached per row count.


def _is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _one_of(column: Any, name: str, *, postgres: bool) -> ColumnElement[bool]:
    if postgres:
        return column == any_(bindparam(name, type_=ARRAY(String())))  # type: ignore[no-any-return]
    return column.in_(bindparam(name, expanding=True))  # type: ignore[no-any-return]


@functools.cache
def _people_by_identities(postgres: bool) -> Any:
    return (
        select(Identity.external_id, Person)
        .join(Person, Person.id == Identity.person_id)
        .where(
            Identity.channel == bindparam("channel"),
            _one_of(Identity.external_id, "external_ids", postgres=postgres),
        )
    )


@functools.cache
def _conversations_by_threads(postgres: bool) -> Any:
    return select(Conversation).where(
        Conversation.channel == bindparam("channel"),
        _one_of(Conversation.thread_key, "thread_keys", postgres=postgres),
    )


# one receipt row per parameter set (an executemany): a message's receipt and its aliases
_SETTLE_RECEIPT_ROW = (
    update(InboundReceipt.__table__)  # type: ignore[arg-type]
    .where(
        InboundReceipt.__table__.c.channel == bindparam("b_channel"),
        InboundReceipt.__table__.c.external_id == bindparam("b_external_id"),
    )
    .values(
        status=bindparam("b_status"),
        reason=bindparam("b_reason"),
        message_id=bindparam("b_message_id"),
    )
)


@functools.cache
def _insert_returning_ids(table: Any) -> Any:
    return insert(table).returning(table.c.id)


async def insert_rows(
    session: AsyncSession,
    table: Any,
    rows: Sequence[dict[str, Any]],
    *,
    returning: bool = True,
) -> list[int]:
    """Insert ``rows`` (the same columns each) in one multi-row INSERT; with
    ``returning``, their new ids in the order given (else an empty list). Columns left
    out get their Python-side defaults, as a Core insert would give them.

    PostgreSQL: one array per column (:mod:`storage.arrays`). SQLite promises no
    RETURNING order, and SQLAlchemy would then insert a row at a time; but the rows of
    one INSERT, made under the writer lock every write transaction takes (``BEGIN
    IMMEDIATE``), get consecutive rowids in the order given, so the ids sorted are the
    ids in order. That is checked, not assumed."""
    if not rows:
        return []
    if _is_postgres(session):
        defaults = _defaults(table, rows[0])
        if defaults:
            rows = [{**defaults, **row} for row in rows]
        return await arrays.insert_rows(session, table, rows, returning=returning)
    if not returning:
        await session.execute(insert(table), list(rows))
        return []
    result = await session.execute(_insert_returning_ids(table), list(rows))
    ids = sorted(result.scalars())
    if ids[-1] - ids[0] != len(ids) - 1:
        raise RuntimeError(f"{table.name}: ids of one INSERT are not consecutive: {ids}")
    return ids


# a sent outbox row, one parameter set per row (SQLite; PostgreSQL takes arrays)
_MARK_SENT = (
    update(OutboxRow.__table__)  # type: ignore[arg-type]
    .where(
        OutboxRow.__table__.c.id == bindparam("b_id"),
        OutboxRow.__table__.c.status == "sending",
    )
    .values(
        status="sent",
        platform_id=bindparam("b_platform_id"),
        sent_at=bindparam("b_now"),
        attempts=bindparam("b_attempts"),
        last_error=None,
        claimed_until=None,
    )
)

# per-article counts added to one shard in one executemany (several turns' feedback)
_ADD_ARTICLE_COUNTS = text(
    "INSERT INTO kb_article_stats (article_id, shard, offered, accepted, rejected) "
    "VALUES (:article_id, :shard, :offered, :accepted, :rejected) "
    "ON CONFLICT (article_id, shard) DO UPDATE SET "
    "offered = kb_article_stats.offered + excluded.offered, "
    "accepted = kb_article_stats.accepted + excluded.accepted, "
    "rejected = kb_article_stats.rejected + excluded.rejected"
)


class Receipts:
    """The durable ledger of every inbound message ever seen."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def record(
        self,
        channel: str,
        external_id: str,
        *,
        alt_ids: Sequence[str] = (),
        now: datetime,
    ) -> bool:
        """Record a receipt; False when this message (or an alias of it) was seen before.

        The receipt and its aliases go in as one multi-row INSERT: when the receipt itself
        is new but an alias was seen before, the receipt is marked ``duplicate``."""
        [fresh] = await self.record_many([(channel, external_id, alt_ids)], now=now)
        return fresh

    async def record_many(
        self, entries: Sequence[tuple[str, str, Sequence[str]]], *, now: datetime
    ) -> list[bool]:
        """:meth:`record` for several messages in one INSERT: ``entries`` are (channel,
        external id, alias ids), no id shared between two entries; whether each is new."""
        if not entries:
            return []
        result = await _insert_many(
            self.session,
            InboundReceipt,
            [
                {"channel": channel, "external_id": key}
                for channel, first, alts in entries
                for key in (first, *alts)
            ],
            shared={"received_at": now},
            conflict=("channel", "external_id"),
            returning=("id", "channel", "external_id"),
        )
        inserted = {(row.channel, row.external_id): row.id for row in result.all()}
        fresh: list[bool] = []
        for channel, first, alts in entries:
            ids = [first, *alts]
            new_id = inserted.get((channel, first))
            if new_id is None:
                # a repeat; aliases are recorded only with a new receipt, so take back any
                # this statement added (uncommitted, so nobody else has seen them)
                extra = [inserted[(channel, a)] for a in alts if (channel, a) in inserted]
                if extra:
                    await self.session.execute(
                        delete(InboundReceipt).where(InboundReceipt.id.in_(extra))
                    )
                fresh.append(False)
                continue
            # every alias must have been new (a repeated id counts as seen)
            new = len(set(ids)) == len(ids) and all((channel, a) in inserted for a in alts)
            if not new:
                await self.session.execute(
                    update(InboundReceipt)
                    .where(InboundReceipt.id == new_id)
                    .values(status="duplicate", reason="already received under another id")
                )
            fresh.append(new)
        return fresh

    async def settle_many(self, settled: Sequence[dict[str, Any]]) -> None:
        """Settle the receipts of several messages in one statement; each entry has
        ``channel``, ``external_ids``, ``status``, ``reason`` and ``message_id``."""
        rows = [
            {
                "channel": entry["channel"],
                "external_id": key,
                "status": entry["status"],
                "reason": entry["reason"],
                "message_id": entry["message_id"],
            }
            for entry in settled
            for key in entry["external_ids"]
        ]
        if not rows:
            return
        if _is_postgres(self.session):  # one statement of arrays
            await arrays.update_rows(
                self.session,
                InboundReceipt.__table__,  # type: ignore[arg-type]
                rows,
                keys=("channel", "external_id"),
            )
            return
        await self.session.execute(  # an executemany
            _SETTLE_RECEIPT_ROW, [{f"b_{k}": v for k, v in row.items()} for row in rows]
        )

    async def claim_archive(
        self, channel: str, external_id: str, *, now: datetime, stale_after: timedelta
    ) -> bool:
        """True for exactly one caller per receipt, unless an earlier claim went stale
        (its claimer died before finishing), in which case one more caller wins."""
        claimed = await self.claim_archives(
            channel, [external_id], now=now, stale_after=stale_after
        )
        return external_id in claimed

    async def claim_archives(
        self, channel: str, external_ids: Sequence[str], *, now: datetime, stale_after: timedelta
    ) -> set[str]:
        """:meth:`claim_archive` for several receipts in one statement: the ids claimed."""
        if not external_ids:
            return set()
        rows = await self.session.execute(
            _CLAIM_ARCHIVES,
            {
                "b_channel": channel,
                "b_external_ids": list(external_ids),
                "b_now": now,
                "b_stale": now - stale_after,
            },
        )
        return set(rows.scalars())

    async def get(self, channel: str, external_id: str) -> InboundReceipt | None:
        return (
            await self.session.execute(
                select(InboundReceipt).where(
                    InboundReceipt.channel == channel, InboundReceipt.external_id == external_id
                )
            )
        ).scalar_one_or_none()


class People:
    """People and their channel identities."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, person_id: int) -> Person | None:
        return await self.session.get(Person, person_id)

    async def by_email(self, email: str) -> Person | None:
        return (
            await self.session.execute(select(Person).where(Person.email == email.lower()))
        ).scalar_one_or_none()

    async def by_identities(self, channel: str, external_ids: Sequence[str]) -> dict[str, Person]:
        """The people behind several identities of one channel, in one query:
        ``{external id: person}`` for those that exist."""
        if not external_ids:
            return {}
        rows = await self.session.execute(
            _people_by_identities(_is_postgres(self.session)),
            {"channel": channel, "external_ids": list(external_ids)},
        )
        return {external_id: person for external_id, person in rows.all()}

    async def identity(self, channel: str, external_id: str) -> Identity | None:
        return (
            await self.session.execute(
                select(Identity).where(
                    Identity.channel == channel, Identity.external_id == external_id
                )
            )
        ).scalar_one_or_none()

    async def identities_of(self, person_id: int) -> list[Identity]:
        rows = await self.session.execute(select(Identity).where(Identity.person_id == person_id))
        return list(rows.scalars())

    async def ensure_by_email(
        self, email: str, *, display_name: str | None, now: datetime
    ) -> Person:
        person, _ = await self.open_by_email(email, display_name=display_name, now=now)
        return person

    async def open_by_email(
        self, email: str, *, display_name: str | None, now: datetime
    ) -> tuple[Person, bool]:
        """The person with this email, created if there is none; True when created here."""
        email = email.lower()
        person = await insert_entity(
            self.session,
            Person,
            {
                "email": email,
                "display_name": display_name,
                "created_at": now,
                "is_vip": False,
                "email_bouncing": False,
            },
            ("email",),
        )
        if person is not None:
            return person, True
        person = await self.by_email(email)
        assert person is not None
        return person, False

    async def open_many(
        self, senders: Sequence[tuple[str | None, str | None]], *, now: datetime
    ) -> list[tuple[Person, bool]]:
        """People for several first-time senders, (verified email or None, display name)
        each, as :meth:`open_by_email` would make them one by one (and a new person for
        each sender without one): ``(person, created here)`` per sender, in order, in a
        few statements."""
        wanted: dict[str, str | None] = {}  # email → the display name of its first sender
        for email, name in senders:
            if email is not None:
                wanted.setdefault(email.lower(), name)
        shared = {"created_at": now, "is_vip": False, "email_bouncing": False}
        made = await insert_entities(
            self.session,
            Person,
            [{"email": email, "display_name": name} for email, name in wanted.items()],
            shared=shared,
            conflict=("email",),
        )
        by_email: dict[str, tuple[Person, bool]] = {p.email: (p, True) for p in made if p.email}
        missing = [email for email in wanted if email not in by_email]
        if missing:
            rows = await self.session.execute(select(Person).where(Person.email.in_(missing)))
            by_email.update((p.email, (p, False)) for p in rows.scalars() if p.email)
        # people without an email are alike but for their names: any of a name will do
        nameless: dict[str | None, list[Person]] = {}
        for person in await insert_entities(
            self.session,
            Person,
            [{"display_name": name} for email, name in senders if email is None],
            shared=shared,
        ):
            nameless.setdefault(person.display_name, []).append(person)
        out: list[tuple[Person, bool]] = []
        told: set[str] = set()
        for email, name in senders:
            if email is None:
                out.append((nameless[name].pop(), True))
                continue
            person, created = by_email[email.lower()]
            out.append((person, created and email.lower() not in told))
            told.add(email.lower())
        return out

    async def link_identities(
        self, links: Sequence[dict[str, Any]], *, now: datetime
    ) -> dict[tuple[str, str], int]:
        """Link several channel identities (``person_id``, ``channel``, ``external_id``,
        ``display_name``, ``email``, ``verified`` each) in one INSERT: ``{(channel,
        external id): the person it belongs to}``, another one's when a concurrent first
        message linked it first."""
        rows = [
            {**link, "email": link["email"].lower() if link["email"] else None} for link in links
        ]
        made = await insert_entities(
            self.session,
            Identity,
            rows,
            shared={"created_at": now},
            conflict=("channel", "external_id"),
        )
        owners = {(i.channel, i.external_id): i.person_id for i in made}
        for link in links:  # linked first by a concurrent first message
            key = (link["channel"], link["external_id"])
            if key not in owners:
                identity = await self.identity(*key)
                assert identity is not None
                owners[key] = identity.person_id
        return owners

    async def mark_bouncing(self, email: str) -> bool:
        result = await self.session.execute(
            update(Person).where(Person.email == email.lower()).values(email_bouncing=True)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


class Conversations:
    """Conversations, their takeover state and their messages."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, conversation_id: int, *, for_update: bool = False) -> Conversation | None:
        stmt = select(Conversation).where(Conversation.id == conversation_id)
        if for_update:
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def by_thread(self, channel: str, thread_key: str) -> Conversation | None:
        return (
            await self.session.execute(
                _CONVERSATION_BY_THREAD, {"channel": channel, "thread_key": thread_key}
            )
        ).scalar_one_or_none()

    async def by_threads(self, channel: str, thread_keys: Sequence[str]) -> dict[str, Conversation]:
        """The conversations of several threads of one channel, in one query."""
        if not thread_keys:
            return {}
        rows = await self.session.execute(
            _conversations_by_threads(_is_postgres(self.session)),
            {"channel": channel, "thread_keys": list(thread_keys)},
        )
        return {conversation.thread_key: conversation for conversation in rows.scalars()}

    async def find_or_open(
        self,
        *,
        channel: str,
        thread_key: str,
        person_id: int,
        reply_to: dict[str, Any],
        now: datetime,
    ) -> tuple[Conversation, bool]:
        conversation = await insert_entity(
            self.session,
            Conversation,
            {
                "person_id": person_id,
                "channel": channel,
                "thread_key": thread_key,
                "reply_to": reply_to,
                "state": "bot",
                "notes": {},
                "created_at": now,
                "updated_at": now,
            },
            ("channel", "thread_key"),
        )
        if conversation is not None:
            return conversation, True
        conversation = await self.by_thread(channel, thread_key)
        assert conversation is not None
        return conversation, False

    async def open_many(
        self, threads: Sequence[dict[str, Any]], *, now: datetime
    ) -> dict[tuple[str, str], Conversation]:
        """:meth:`find_or_open` for several threads (``person_id``, ``channel``,
        ``thread_key``, ``reply_to`` each) in one INSERT: ``{(channel, thread key):
        conversation}``, the one found for a thread that had one meanwhile."""
        made = await insert_entities(
            self.session,
            Conversation,
            threads,
            shared={"state": "bot", "notes": {}, "created_at": now, "updated_at": now},
            conflict=("channel", "thread_key"),
        )
        out = {(c.channel, c.thread_key): c for c in made}
        for thread in threads:
            key = (thread["channel"], thread["thread_key"])
            if key not in out:
                found = await self.by_thread(*key)
                assert found is not None
                out[key] = found
        return out

    async def by_reference(
        self, channel: str, references: Sequence[str], person_id: int
    ) -> Conversation | None:
        """The conversation one of ``references`` belongs to, only if it is this person's."""
        if not references:
            return None
        refs = list(references)
        via_messages = select(Message.conversation_id).where(
            Message.channel == channel, Message.external_id.in_(refs)
        )
        via_outbox = select(OutboxRow.conversation_id).where(
            OutboxRow.channel == channel, OutboxRow.platform_id.in_(refs)
        )
        # the person's own earlier messages, named by an alias id (an email's Message-ID)
        via_aliases = (
            select(Message.conversation_id)
            .join(InboundReceipt, InboundReceipt.message_id == Message.id)
            .where(
                InboundReceipt.channel == channel,
                InboundReceipt.external_id.in_([f"msgid:{ref}" for ref in refs]),
            )
        )
        stmt = (
            select(Conversation)
            .where(
                Conversation.person_id == person_id,
                or_(
                    Conversation.id.in_(via_messages),
                    Conversation.id.in_(via_outbox),
                    Conversation.id.in_(via_aliases),
                ),
            )
            .order_by(Conversation.updated_at.desc())
            .limit(1)
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def by_outbound_reference(
        self, channel: str, references: Sequence[str]
    ) -> Conversation | None:
        """The conversation whose outbound message one of ``references`` names (bounces)."""
        if not references:
            return None
        stmt = (
            select(Conversation)
            .join(OutboxRow, OutboxRow.conversation_id == Conversation.id)
            .where(OutboxRow.channel == channel, OutboxRow.platform_id.in_(list(references)))
            .limit(1)
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()

    @staticmethod
    def new_message(
        conversation: Conversation,
        *,
        direction: str,
        author_kind: str,
        text: str,
        now: datetime,
        external_id: str | None = None,
        author_id: int | None = None,
        private: bool = False,
        kind: str = "message",
        meta: dict[str, Any] | None = None,
    ) -> MessageRow:
        """A message of ``conversation``, built but not inserted (see :meth:`insert_messages`)."""
        return MessageRow(
            conversation_id=conversation.id,
            direction=direction,
            channel=conversation.channel,
            external_id=external_id,
            author_kind=author_kind,
            author_id=author_id,
            kind=kind,
            text=text,
            private=private,
            meta=meta or {},
            created_at=now,
        )

    async def add_message(
        self,
        conversation: Conversation,
        *,
        direction: str,
        author_kind: str,
        text: str,
        now: datetime,
        external_id: str | None = None,
        author_id: int | None = None,
        private: bool = False,
        kind: str = "message",
        meta: dict[str, Any] | None = None,
    ) -> Message:
        """Add a message as an ORM object and insert it now; the conversation's activity
        is marked with it."""
        built = self.new_message(
            conversation,
            direction=direction,
            author_kind=author_kind,
            author_id=author_id,
            text=text,
            kind=kind,
            now=now,
            external_id=external_id,
            private=private,
            meta=meta,
        )
        message = Message(**built.values())
        self.touch(conversation, message)
        self.session.add(message)
        await self.session.flush()
        return message

    async def insert_messages(self, messages: Sequence[MessageRow]) -> None:
        """Insert messages built with :meth:`new_message` in one statement, in order; each
        gets its id. Without the ORM's unit of work: about a third of its CPU per row.
        The caller flushes the session first if the messages need rows it has pending."""
        if not messages:
            return
        ids = await insert_rows(self.session, Message.__table__, [m.values() for m in messages])
        for message, new_id in zip(messages, ids, strict=True):
            message.id = new_id

    @staticmethod
    def touch(conversation: Conversation, message: Message | MessageRow) -> None:
        conversation.updated_at = message.created_at
        if message.direction == "in":
            conversation.last_inbound_at = message.created_at

    async def message_by_external_id(self, channel: str, external_id: str) -> Message | None:
        return (
            await self.session.execute(
                select(Message).where(
                    Message.channel == channel, Message.external_id == external_id
                )
            )
        ).scalar_one_or_none()

    async def messages(
        self,
        conversation_id: int,
        *,
        after_id: int = 0,
        include_private: bool = True,
        limit: int = 500,
    ) -> list[Message]:
        stmt = select(Message).where(
            Message.conversation_id == conversation_id, Message.id > after_id
        )
        if not include_private:
            stmt = stmt.where(Message.private.is_(False))
        rows = await self.session.execute(stmt.order_by(Message.id).limit(limit))
        return list(rows.scalars())

    async def in_state(self, states: Sequence[str], *, limit: int = 200) -> list[Conversation]:
        rows = await self.session.execute(
            select(Conversation)
            .where(Conversation.state.in_(list(states)))
            .order_by(Conversation.escalated_at, Conversation.id)
            .limit(limit)
        )
        return list(rows.scalars())

    async def transition(
        self,
        conversation_id: int,
        *,
        from_states: Sequence[str],
        to_state: str,
        now: datetime,
        agent_id: int | None = None,
        require_agent: int | None = None,
    ) -> bool:
        """Compare-and-set the takeover state: exactly one concurrent caller wins."""
        conditions = [Conversation.id == conversation_id, Conversation.state.in_(list(from_states))]
        if require_agent is not None:
            conditions.append(Conversation.agent_id == require_agent)
        values: dict[str, Any] = {"state": to_state, "updated_at": now, "agent_id": agent_id}
        if to_state == "queued":
            values["escalated_at"] = now
        result = await self.session.execute(
            update(Conversation).where(and_(*conditions)).values(**values)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def expired_flows(self, now: datetime, *, limit: int = 100) -> list[Conversation]:
        rows = await self.session.execute(
            select(Conversation)
            .where(Conversation.flow_expires_at.is_not(None), Conversation.flow_expires_at <= now)
            .limit(limit)
        )
        return list(rows.scalars())

    async def bot_replies_to_person_since(self, person_id: int, since: datetime) -> int:
        """Automatic replies sent to a person, in any of their conversations, since then."""
        result = await self.session.execute(
            _BOT_REPLIES_TO_PERSON_SINCE, {"person_id": person_id, "since": since}
        )
        return int(result.scalar_one())


class Outbox:
    """Outbound messages waiting for, in, or past delivery."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def enqueue(
        self,
        *,
        channel: str,
        payload: dict[str, Any],
        now: datetime,
        conversation_id: int | None = None,
        message_id: int | None = None,
    ) -> OutboxRow:
        row = self.build(
            channel=channel,
            payload=payload,
            now=now,
            conversation_id=conversation_id,
            message_id=message_id,
        )
        self.session.add(row)
        await self.session.flush()
        return row

    @staticmethod
    def build(
        *,
        channel: str,
        payload: dict[str, Any],
        now: datetime,
        conversation_id: int | None = None,
        message_id: int | None = None,
    ) -> OutboxRow:
        """A pending row, not yet added: callers queueing several add them in one flush."""
        return OutboxRow(
            channel=channel,
            payload=payload,
            conversation_id=conversation_id,
            message_id=message_id,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )

    @staticmethod
    def row(
        *,
        channel: str,
        payload: dict[str, Any],
        now: datetime,
        conversation_id: int | None = None,
        message_id: int | None = None,
    ) -> dict[str, Any]:
        """A pending row's column values, for :meth:`insert_many`."""
        return {
            "channel": channel,
            "payload": payload,
            "conversation_id": conversation_id,
            "message_id": message_id,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "claimed_until": None,
            "send_started_at": None,
            "last_error": None,
            "platform_id": None,
            "created_at": now,
            "sent_at": None,
        }

    async def insert_many(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Insert rows from :meth:`row` in one statement; their ids, in order."""
        return await insert_rows(self.session, OutboxRow.__table__, rows)

    async def mark_sent(
        self, sent: Sequence[tuple[int, str | None, int]], *, now: datetime
    ) -> None:
        """Mark rows sent in one statement: (id, platform id, attempts) each. Only a row
        still ``sending`` changes (one recovered from a lapsed claim is left alone)."""
        if not sent:
            return
        if _is_postgres(self.session):
            await arrays.update_rows(
                self.session,
                OutboxRow.__table__,  # type: ignore[arg-type]
                [{"id": i, "platform_id": p, "attempts": a} for i, p, a in sent],
                keys=("id",),
                shared={
                    "status": "sent",
                    "sent_at": now,
                    "last_error": None,
                    "claimed_until": None,
                },
                where="outbox.status = 'sending'",
            )
            return
        await self.session.execute(  # an executemany keyed by id
            _MARK_SENT,
            [{"b_id": i, "b_platform_id": p, "b_attempts": a, "b_now": now} for i, p, a in sent],
        )

    async def get(self, row_id: int) -> OutboxRow | None:
        return await self.session.get(OutboxRow, row_id)

    async def payloads(self, row_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """``{id: payload}`` of the given rows (missing ids are left out), in one query."""
        if not row_ids:
            return {}
        rows = await self.session.execute(
            select(OutboxRow.id, OutboxRow.payload).where(OutboxRow.id.in_(list(row_ids)))
        )
        return {row_id: dict(payload) for row_id, payload in rows}

    async def claim_due(
        self, now: datetime, *, lease: timedelta, limit: int, skip_channels: Sequence[str] = ()
    ) -> list[Row[Any]]:
        """Claim due rows for this process in one statement, oldest first.

        ``UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING``: on PostgreSQL the inner
        select takes ``FOR UPDATE SKIP LOCKED``, so concurrent dispatchers claim disjoint
        rows; on SQLite the writer lock (``BEGIN IMMEDIATE``) serialises them.
        """
        table = OutboxRow.__table__
        due = (
            select(table.c.id)
            .where(table.c.status == "pending", table.c.next_attempt_at <= now)
            .order_by(table.c.next_attempt_at, table.c.id)
            .limit(limit)
        )
        if skip_channels:
            due = due.where(table.c.channel.not_in(list(skip_channels)))
        if self.session.get_bind().dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)
        stmt = (
            update(table)  # type: ignore[arg-type]
            .where(table.c.id.in_(due.scalar_subquery()))
            .values(status="sending", claimed_until=now + lease, send_started_at=None)
            .returning(
                table.c.id,
                table.c.channel,
                table.c.attempts,
                table.c.payload,
                table.c.conversation_id,
                table.c.next_attempt_at,
            )
        )
        rows = list((await self.session.execute(stmt)).all())
        rows.sort(key=lambda row: (row.next_attempt_at, row.id))
        return rows

    async def stale_claims(self, now: datetime, *, limit: int = 100) -> list[OutboxRow]:
        """Rows whose claimer died (lease expired while ``sending``)."""
        stmt = (
            select(OutboxRow)
            .where(OutboxRow.status == "sending", OutboxRow.claimed_until < now)
            .limit(limit)
        )
        if self.session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        return list((await self.session.execute(stmt)).scalars())

    async def count_by_status(self) -> dict[str, int]:
        rows = await self.session.execute(
            select(OutboxRow.status, func.count(OutboxRow.id)).group_by(OutboxRow.status)
        )
        return {status: int(count) for status, count in rows.all()}


_NUMBER_BLOCKS_KEY = "deskbot.ticket_numbers"  # prefix → [next, last] reserved
_NUMBER_BLOCK_SIZE_KEY = "deskbot.ticket_number_block"
_RELEASE_NUMBERS = text(
    "UPDATE ticket_counters SET last_value = :used WHERE prefix = :prefix AND last_value = :last"
)


@functools.cache
def _reserve_numbers() -> Any:
    return _upsert(
        TicketCounter,
        ("prefix", "last_value"),
        ("prefix",),
        "DO UPDATE SET last_value = ticket_counters.last_value + excluded.last_value",
        "last_value",
    )


class Tickets:
    """Tickets, their numbers and event log."""

    PREFIXES = {"incident": "INC", "request": "REQ", "problem": "PRB"}

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def next_number(self, kind: str) -> str:
        """The next ticket number of ``kind``, gap-free.

        Numbers are reserved from the counter in blocks of :meth:`reserve_numbers` (one
        by default), so a round that opens many tickets bumps the counter once; the
        counter's row stays locked by this transaction until it ends, so what was not used
        goes back before the commit (:meth:`release_numbers`) and no number is skipped."""
        prefix = self.PREFIXES[kind]
        blocks: dict[str, list[int]] = self.session.info.setdefault(_NUMBER_BLOCKS_KEY, {})
        block = blocks.get(prefix)
        if block is None or block[0] > block[1]:
            size = max(1, int(self.session.info.get(_NUMBER_BLOCK_SIZE_KEY, 1)))
            reserve = {"prefix": prefix, "last_value": size}
            last = (await self.session.execute(_reserve_numbers(), reserve)).scalar_one()
            before_commit(self.session, self.release_numbers)
            block = blocks[prefix] = [last - size + 1, last]
        value = block[0]
        block[0] += 1
        return f"{prefix}-{value:06d}"

    def reserve_numbers(self, size: int) -> None:
        """Reserve this many numbers at a time from now on in this transaction (the
        conversation manager: the messages left in a round)."""
        self.session.info[_NUMBER_BLOCK_SIZE_KEY] = size

    async def release_numbers(self) -> None:
        """Give back the reserved numbers not used, before the commit."""
        blocks: dict[str, list[int]] | None = self.session.info.pop(_NUMBER_BLOCKS_KEY, None)
        for prefix, (next_value, last) in (blocks or {}).items():
            if next_value <= last:
                await self.session.execute(
                    _RELEASE_NUMBERS, {"prefix": prefix, "used": next_value - 1, "last": last}
                )

    async def add(self, ticket: Ticket, *, flush: bool = True) -> Ticket:
        """Add a ticket; with ``flush=False`` it is inserted at the session's next flush
        (with the other tickets of a round), and gets its id then."""
        self.session.add(ticket)
        if flush:
            await self.session.flush()
        return ticket

    async def get(self, ticket_id: int) -> Ticket | None:
        return await self.session.get(Ticket, ticket_id)

    async def by_number(self, number: str) -> Ticket | None:
        return (
            await self.session.execute(select(Ticket).where(Ticket.number == number.upper()))
        ).scalar_one_or_none()

    async def of_requester(
        self, person_id: int, *, statuses: Sequence[str] | None = None, limit: int = 20
    ) -> list[Ticket]:
        stmt = select(Ticket).where(Ticket.requester_id == person_id)
        if statuses:
            stmt = stmt.where(Ticket.status.in_(list(statuses)))
        rows = await self.session.execute(stmt.order_by(Ticket.id.desc()).limit(limit))
        return list(rows.scalars())

    async def log(
        self,
        ticket: Ticket,
        *,
        action: str,
        actor_kind: str,
        now: datetime,
        actor_id: int | None = None,
        public: bool = True,
        detail: dict[str, Any] | None = None,
        flush: bool = True,
    ) -> TicketEvent | None:
        """Log an event of ``ticket``. With ``flush=False`` the event is a staged row
        (:func:`stage_row`), written after its ticket with the transaction's other events,
        and None is returned."""
        values = {
            "at": now,
            "actor_kind": actor_kind,
            "actor_id": actor_id,
            "action": action,
            "public": public,
            "detail": detail or {},
        }
        if not flush:
            stage_row(self.session, TicketEvent.__table__, {"ticket_id": ticket, **values})
            return None
        event = TicketEvent(ticket_id=ticket.id, **values)
        self.session.add(event)
        await self.session.flush()
        return event

    async def listing(
        self,
        *,
        groups: Sequence[str] | None,
        default_group: str,
        statuses: Sequence[str] = (),
        limit: int = 50,
    ) -> list[Ticket]:
        """The newest tickets of some agent groups (all groups when ``groups`` is None);
        tickets without a group count as ``default_group``."""
        stmt = select(Ticket)
        if groups is not None:
            visible: ColumnElement[bool] = Ticket.agent_group.in_(list(groups))
            if default_group in groups:
                visible = or_(visible, Ticket.agent_group.is_(None))
            stmt = stmt.where(visible)
        if statuses:
            stmt = stmt.where(Ticket.status.in_(list(statuses)))
        rows = await self.session.execute(stmt.order_by(Ticket.id.desc()).limit(limit))
        return list(rows.scalars())

    async def events(self, ticket_id: int) -> list[TicketEvent]:
        rows = await self.session.execute(
            select(TicketEvent).where(TicketEvent.ticket_id == ticket_id).order_by(TicketEvent.id)
        )
        return list(rows.scalars())


class Agents:
    """Agents who take conversations over."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, agent_id: int) -> Agent | None:
        return await self.session.get(Agent, agent_id)

    async def by_username(self, username: str) -> Agent | None:
        return (
            await self.session.execute(select(Agent).where(Agent.username == username))
        ).scalar_one_or_none()

    async def by_slack_user(self, slack_user_id: str) -> Agent | None:
        return (
            await self.session.execute(select(Agent).where(Agent.slack_user_id == slack_user_id))
        ).scalar_one_or_none()

    async def add(self, agent: Agent) -> Agent:
        self.session.add(agent)
        await self.session.flush()
        return agent

    async def count(self) -> int:
        return int((await self.session.execute(select(func.count(Agent.id)))).scalar_one())

    async def ensure_slack_agent(
        self, slack_user_id: str, *, display_name: str, now: datetime
    ) -> Agent:
        """The agent for a Slack user, created once even when two clicks race."""
        await insert_ignore(
            self.session,
            Agent,
            {
                "username": f"slack:{slack_user_id}",
                "display_name": display_name,
                "password_hash": None,
                "groups": [],
                "is_lead": False,
                "active": True,
                "slack_user_id": slack_user_id,
                "credentials_changed_at": now,
                "created_at": now,
            },
            ("slack_user_id",),
        )
        agent = await self.by_slack_user(slack_user_id)
        assert agent is not None
        return agent

    async def leads(self) -> list[Agent]:
        rows = await self.session.execute(
            select(Agent).where(Agent.is_lead.is_(True), Agent.active.is_(True))
        )
        return list(rows.scalars())


class Subscriptions:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, person_id: int, service: str, *, now: datetime) -> bool:
        new_id = await insert_ignore(
            self.session,
            Subscription,
            {"person_id": person_id, "service": service, "created_at": now},
            ("person_id", "service"),
        )
        return new_id is not None

    async def remove(self, person_id: int, service: str) -> bool:
        from sqlalchemy import delete

        result = await self.session.execute(
            delete(Subscription).where(
                Subscription.person_id == person_id, Subscription.service == service
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def of_person(self, person_id: int) -> list[str]:
        rows = await self.session.execute(
            select(Subscription.service).where(Subscription.person_id == person_id)
        )
        return sorted(rows.scalars())

    async def active_outage(self, service: str) -> Outage | None:
        """The active broadcast outage on a service, if any (what subscribers hear about).

        The active outages (a handful at most) are read once per transaction, so the
        turns of one round that name services share one query."""
        active: dict[str, Outage] | None = self.session.info.get(_ACTIVE_OUTAGES_KEY)
        if active is None:
            active = {}
            for outage in (await self.session.execute(_ACTIVE_OUTAGES)).scalars():
                active.setdefault(outage.service, outage)  # the newest per service
            self.session.info[_ACTIVE_OUTAGES_KEY] = active
        return active.get(service)

    async def subscribers(self, service: str) -> list[int]:
        rows = await self.session.execute(
            select(Subscription.person_id).where(Subscription.service == service)
        )
        return list(rows.scalars())


@dataclass(frozen=True, slots=True)
class ArticleCounts:
    """How often one knowledge article was offered, accepted and rejected."""

    offered: int
    accepted: int
    rejected: int


class KnowledgeFeedback:
    """Per-article offered/accepted/rejected counts, and the questions we refused.

    The counts are kept in ``SHARDS`` rows per article, summed when read. A writer adds
    to one shard; writers in flight at once (the conversation manager's rounds, on one
    node or several) pick different shards, so none waits on the row lock another holds
    until its commit."""

    FIELDS = ("offered", "accepted", "rejected")
    SHARDS = 32

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_counts(self, counts: dict[str, dict[str, int]], *, shard: int = 0) -> None:
        """Add several articles' offered/accepted/rejected counts to ``shard`` (taken
        modulo ``SHARDS``) in one executemany."""
        shard %= self.SHARDS
        rows = [
            {
                "article_id": article_id,
                "shard": shard,
                **{f: int(fields.get(f, 0)) for f in self.FIELDS},
            }
            for article_id, fields in sorted(counts.items())
        ]
        if rows:
            await self.session.execute(_ADD_ARTICLE_COUNTS, rows)

    async def stats(self) -> dict[str, ArticleCounts]:
        """Every counted article's counts, its shards summed."""
        rows = await self.session.execute(
            select(
                ArticleStats.article_id,
                func.sum(ArticleStats.offered),
                func.sum(ArticleStats.accepted),
                func.sum(ArticleStats.rejected),
            ).group_by(ArticleStats.article_id)
        )
        return {
            article_id: ArticleCounts(int(offered), int(accepted), int(rejected))
            for article_id, offered, accepted, rejected in rows
        }

    def refused(
        self,
        query: str,
        *,
        now: datetime,
        conversation_id: int | None,
        best_article_id: str | None,
        best_confidence: float | None,
    ) -> None:
        stage_row(
            self.session,
            RefusedQuery.__table__,
            {
                "query": query[:2000],
                "at": now,
                "conversation_id": conversation_id,
                "best_article_id": best_article_id,
                "best_confidence": best_confidence,
            },
        )  # written with the turn's other rows

    async def refused_queries(self, *, limit: int = 100) -> list[RefusedQuery]:
        rows = await self.session.execute(
            select(RefusedQuery).order_by(RefusedQuery.id.desc()).limit(limit)
        )
        return list(rows.scalars())


class Alerts:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def raise_alert(
        self,
        kind: str,
        summary: str,
        *,
        now: datetime,
        conversation_id: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Alert:
        alert = Alert(
            kind=kind, summary=summary, conversation_id=conversation_id, detail=detail or {}, at=now
        )
        self.session.add(alert)
        await self.session.flush()
        return alert

    async def recent(
        self, *, kind: str | None = None, since: datetime | None = None, limit: int = 50
    ) -> list[Alert]:
        stmt = select(Alert)
        if kind:
            stmt = stmt.where(Alert.kind == kind)
        if since is not None:
            stmt = stmt.where(Alert.at >= since)
        rows = await self.session.execute(stmt.order_by(Alert.id.desc()).limit(limit))
        return list(rows.scalars())


class Inbox:
    """Inbound messages accepted fast and handled later, with retry."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def accept(
        self, *, channel: str, external_id: str, payload: dict[str, Any], now: datetime
    ) -> bool:
        """Store for handling; False when this (channel, external id) was already accepted."""
        from storage.models import InboxRow

        new_id = await insert_ignore(
            self.session,
            InboxRow,
            {
                "channel": channel,
                "external_id": external_id,
                "payload": payload,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            },
            ("channel", "external_id"),
        )
        return new_id is not None

    async def claim_due(self, now: datetime, *, lease: timedelta, limit: int) -> list[Any]:
        from storage.models import InboxRow

        stmt = (
            select(InboxRow)
            .where(
                or_(
                    and_(InboxRow.status == "pending", InboxRow.next_attempt_at <= now),
                    and_(InboxRow.status == "handling", InboxRow.claimed_until < now),
                )
            )
            .order_by(InboxRow.id)
            .limit(limit)
        )
        if self.session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        rows = list((await self.session.execute(stmt)).scalars())
        for row in rows:
            row.status = "handling"
            row.claimed_until = now + lease
        await self.session.flush()
        return rows

    async def count_by_status(self) -> dict[str, int]:
        from storage.models import InboxRow

        rows = await self.session.execute(
            select(InboxRow.status, func.count(InboxRow.id)).group_by(InboxRow.status)
        )
        return {status: int(count) for status, count in rows.all()}
