"""R46: 50 concurrent writers on one SQLite file, from several processes: no
"database is locked", no lost write (WAL + busy timeout + BEGIN IMMEDIATE)."""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from sqlalchemy import func, select

from storage.db import Database
from storage.migrate import upgrade
from storage.models import InboundReceipt, Message

PROCESSES = 5
WRITERS_PER_PROCESS = 10


def _writer_process(url: str, process_index: int, kb_dir: str, catalog: str) -> int:
    async def go() -> int:
        from bot.clock import SystemClock
        from bot.main import build_core
        from bot.settings import Settings
        from bot.types import Inbound, Sender

        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, kb_dir=Path(kb_dir), catalog=Path(catalog), secret_key="x"
        )
        database = Database(url)
        core = build_core(settings, clock=SystemClock(), database=database)

        async def one(writer: int) -> bool:
            user = f"p{process_index}w{writer}"
            result = await core.manager.handle(
                Inbound(
                    channel="memory",
                    external_id=f"{user}-1",
                    sender=Sender(external_id=user, display_name=user),
                    text="my printer is jammed on floor 3",
                    thread_key=f"dm:{user}",
                )
            )
            return not result.duplicate

        results = await asyncio.gather(*(one(w) for w in range(WRITERS_PER_PROCESS)))
        await database.dispose()
        return sum(results)

    return asyncio.run(go())


async def test_fifty_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    from bot.settings import SAMPLE_CATALOG, SAMPLE_KB_DIR

    url = f"sqlite+aiosqlite:///{tmp_path / 'busy.sqlite3'}"
    database = Database(url)
    await upgrade(database)
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(PROCESSES, mp_context=context) as pool:
        handled = await asyncio.gather(
            *(
                loop.run_in_executor(
                    pool, _writer_process, url, i, str(SAMPLE_KB_DIR), str(SAMPLE_CATALOG)
                )
                for i in range(PROCESSES)
            )
        )
    assert sum(handled) == PROCESSES * WRITERS_PER_PROCESS
    async with database.read() as session:
        receipts = (await session.execute(select(func.count(InboundReceipt.id)))).scalar_one()
        inbound = (
            await session.execute(select(func.count(Message.id)).where(Message.direction == "in"))
        ).scalar_one()
    await database.dispose()
    assert receipts == inbound == PROCESSES * WRITERS_PER_PROCESS


async def test_migrations_match_the_models(database: Database) -> None:
    """Alembic is the only way the schema changes: the models must not drift from it."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from storage.models import Base

    def diff(connection):  # type: ignore[no-untyped-def]
        context = MigrationContext.configure(connection, opts={"compare_type": False})
        return compare_metadata(context, Base.metadata)

    async with database.engine.connect() as connection:
        changes = await connection.run_sync(diff)
    assert changes == []
