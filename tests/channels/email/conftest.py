"""Fixtures for the live email tests: one Dovecot per test session, aiosmtpd per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from storage.db import Database
from tests.channels.email.desk import EmailDesk, make_core
from tests.channels.email.peers import Dovecot, SmtpPeer, dovecot_available, running_dovecot
from tests.conftest import need_peer


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    need_peer(dovecot_available(), "Dovecot is not installed (apt-get install -y dovecot-imapd)")
    with running_dovecot() as server:
        yield server


@pytest.fixture
async def smtp_peer() -> AsyncIterator[SmtpPeer]:
    peer = SmtpPeer()
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop()


async def _email_desk(
    database: Database, tmp_path: Path, dovecot: Dovecot, smtp_peer: SmtpPeer
) -> AsyncIterator[EmailDesk]:
    desk = EmailDesk(
        core=make_core(database, tmp_path), dovecot=dovecot, user=dovecot.user(), smtp=smtp_peer
    )
    try:
        yield desk
    finally:
        await desk.close()


@pytest.fixture
async def email_desk(
    sqlite_database: Database, tmp_path: Path, dovecot: Dovecot, smtp_peer: SmtpPeer
) -> AsyncIterator[EmailDesk]:
    """The real core on SQLite, a fresh Dovecot mailbox and an aiosmtpd capture."""
    async for desk in _email_desk(sqlite_database, tmp_path, dovecot, smtp_peer):
        yield desk


@pytest.fixture
async def email_desk_any_db(
    database: Database, tmp_path: Path, dovecot: Dovecot, smtp_peer: SmtpPeer
) -> AsyncIterator[EmailDesk]:
    """As ``email_desk``, once on SQLite and once on PostgreSQL."""
    async for desk in _email_desk(database, tmp_path, dovecot, smtp_peer):
        yield desk
