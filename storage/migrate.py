"""Apply Alembic migrations: the only way deskbot's schema changes."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

from storage.db import Database

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _upgrade_on(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def upgrade(database: Database, revision: str = "head") -> None:
    """Bring the database to ``revision`` over the application's own engine."""
    async with database.engine.connect() as connection:
        if database.is_postgres:
            # several nodes may start at once: one migrates, the others wait for it
            from sqlalchemy import text

            await connection.execute(text("SELECT pg_advisory_lock(727274)"))
        try:
            await connection.run_sync(_upgrade_on, revision)
            await connection.commit()
        finally:
            if database.is_postgres:
                from sqlalchemy import text

                await connection.execute(text("SELECT pg_advisory_unlock(727274)"))
                await connection.commit()
    logger.info("storage.migrated revision=%s", revision)
