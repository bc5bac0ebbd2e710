"""R48 in miniature: kill -9 between commit and delivery, and between delivery and the
delivered mark; restart; every reply is delivered, none twice, and the one ambiguous
window (sent, not yet marked, on a channel that cannot reconcile) is flagged.

Both ways a reply reaches the dispatcher are covered: claimed from the outbox (a
``drain``), and handed over by the manager after its commit (a serving dispatcher)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from storage.db import Database
from storage.models import Alert, OutboxRow
from tests.conftest import REPO_ROOT

WORKER = Path(__file__).with_name("crash_worker.py")


def _run(url: str, sink: Path, *args: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, str(WORKER), url, str(sink), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    if proc.returncode not in (0, -9):
        raise AssertionError(proc.stderr.decode()[-3000:])
    return proc.returncode


async def _rows(url: str) -> tuple[list[OutboxRow], list[Alert]]:
    database = Database(url)
    try:
        async with database.read() as session:
            rows = list((await session.execute(select(OutboxRow))).scalars())
            alerts = list((await session.execute(select(Alert))).scalars())
        return rows, alerts
    finally:
        await database.dispose()


def _lines(sink: Path) -> list[str]:
    return sink.read_text().splitlines() if sink.exists() else []


@pytest.mark.parametrize("serve", [False, True], ids=["claimed", "handed"])
@pytest.mark.parametrize(
    ("kill_at", "reconcile", "lines", "status"),
    [
        # committed, claimed, never started: delivered once after restart
        ("claimed", False, 1, "sent"),
        # committed and claimed (handed over: stamped already), not sent: reconciled,
        # not found, sent once after restart
        ("claimed", True, 1, "sent"),
        # delivered, not marked, channel can reconcile: found, marked, not resent
        ("after_send", True, 1, "sent"),
        # started, not sent, channel can reconcile: not found, sent once after restart
        ("before_send", True, 1, "sent"),
        # the documented ambiguous window on a channel that cannot reconcile
        ("after_send", False, 1, "ambiguous"),
        ("before_send", False, 0, "ambiguous"),
    ],
)
async def test_kill_9_and_restart(
    tmp_path: Path, kill_at: str, reconcile: bool, lines: int, status: str, serve: bool
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'crash.sqlite3'}"
    sink = tmp_path / "delivered.txt"
    flag = ["--reconcile"] if reconcile else []
    assert _run(url, sink, "first", kill_at, *flag, *(["--serve"] if serve else [])) == -9
    assert _run(url, sink, "restart", *flag) == 0
    assert _run(url, sink, "restart", *flag) == 0  # a second restart changes nothing
    rows, alerts = await _rows(url)
    assert len(rows) == 1
    assert rows[0].status == status
    assert len(_lines(sink)) == lines
    if status == "ambiguous":
        assert [a.kind for a in alerts] == ["delivery_ambiguous"]
    else:
        assert alerts == []
