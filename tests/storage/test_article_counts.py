"""Knowledge-article counts: shards summed when read, and the migration that sharded them.

Both databases; on PostgreSQL the migration runs in a scratch database of its own (the
worker's shared one stays at head for the other tests).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Connection

from storage.db import Database
from storage.migrate import alembic_config, upgrade
from storage.repositories import ArticleCounts, KnowledgeFeedback
from tests.conftest import PG_DSN, _pg_admin_execute, _pg_available, need_peer


@pytest.fixture(params=["sqlite", "postgres"])
async def blank(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A database with no schema at all."""
    if request.param == "sqlite":
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'blank.sqlite3'}")
        try:
            yield db
        finally:
            await db.dispose()
        return
    need_peer(_pg_available(), f"PostgreSQL is not reachable at {PG_DSN}")
    name = f"deskbot_blank_{uuid.uuid4().hex[:8]}"
    await _pg_admin_execute(f'CREATE DATABASE "{name}"')
    db = Database(f"{PG_DSN}/{name}")
    try:
        yield db
    finally:
        await db.dispose()
        await _pg_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _downgrade(database: Database, revision: str) -> None:
    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    async with database.engine.connect() as connection:
        await connection.run_sync(run)
        await connection.commit()


async def _rows(database: Database) -> list[tuple[object, ...]]:
    async with database.read() as session:
        rows = await session.execute(text("SELECT * FROM kb_article_stats ORDER BY article_id"))
        return [tuple(row) for row in rows]


async def test_counts_of_every_shard_add_up(database: Database) -> None:
    async with database.transaction() as session:
        feedback = KnowledgeFeedback(session)
        await feedback.add_counts({"vpn": {"offered": 2, "accepted": 1}}, shard=0)
        await feedback.add_counts({"vpn": {"offered": 1, "rejected": 1}}, shard=5)
        await feedback.add_counts({"printer": {"offered": 1}}, shard=5)
    async with database.transaction() as session:
        # a shard number past the last is the same shard, modulo
        await KnowledgeFeedback(session).add_counts(
            {"vpn": {"offered": 4}}, shard=KnowledgeFeedback.SHARDS + 5
        )
    async with database.read() as session:
        stats = await KnowledgeFeedback(session).stats()
        shards = await session.execute(
            text(
                "SELECT shard, offered FROM kb_article_stats WHERE article_id = 'vpn' "
                "ORDER BY shard"
            )
        )
        assert [tuple(row) for row in shards] == [(0, 2), (5, 5)]
    assert stats == {
        "vpn": ArticleCounts(offered=7, accepted=1, rejected=1),
        "printer": ArticleCounts(offered=1, accepted=0, rejected=0),
    }


async def test_the_migration_keeps_the_counts_both_ways(blank: Database) -> None:
    await upgrade(blank, "0003")
    async with blank.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO kb_article_stats (article_id, offered, accepted, rejected) "
                "VALUES ('vpn', 10, 4, 2), ('printer', 3, 1, 0)"
            )
        )
    await upgrade(blank)
    # what was counted before is shard 0 of each article
    assert await _rows(blank) == [("printer", 3, 1, 0, 0), ("vpn", 10, 4, 2, 0)]
    async with blank.transaction() as session:
        await KnowledgeFeedback(session).add_counts(
            {"vpn": {"offered": 5, "accepted": 1}, "printer": {"rejected": 2}}, shard=7
        )
    async with blank.read() as session:
        assert (await KnowledgeFeedback(session).stats())["vpn"] == ArticleCounts(15, 5, 2)
    # back down: one row per article again, holding the sums of its shards
    await _downgrade(blank, "0003")
    assert await _rows(blank) == [("printer", 3, 1, 2), ("vpn", 15, 5, 2)]
