"""The composition root enables a channel exactly when its settings are present."""

from __future__ import annotations

from pathlib import Path

from bot.main import build_channels, build_core
from storage.db import Database
from tests.conftest import make_settings


async def test_only_webchat_without_settings(tmp_path: Path, sqlite_database: Database) -> None:
    core = build_core(make_settings(tmp_path), database=sqlite_database)
    assert [c.kind for c in build_channels(core)] == ["webchat"]


async def test_email_is_enabled_by_its_settings(tmp_path: Path, sqlite_database: Database) -> None:
    settings = make_settings(
        tmp_path,
        email_address="desk@example.com",
        imap_host="127.0.0.1",
        imap_password="secret",
        smtp_host="127.0.0.1",
    )
    core = build_core(settings, database=sqlite_database)
    kinds = [c.kind for c in build_channels(core)]
    assert kinds == ["webchat", "email"]
