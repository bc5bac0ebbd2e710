"""A deskbot process the crash test kills with SIGKILL at a chosen point (R48).

Usage: crash_worker.py DB_URL SINK_FILE MODE [KILL_AT] [--reconcile] [--serve]
MODE "first": handle one inbound and deliver, dying at KILL_AT; with --serve the
dispatcher is serving, so the manager hands it the reply (else ``drain`` claims it).
MODE "restart": come back later (past every lease) and deliver what is due.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from bot.clock import SystemClock
from bot.main import build_core
from bot.outbox import OutboxPolicy
from bot.settings import SAMPLE_CATALOG, SAMPLE_KB_DIR, Settings
from bot.types import Delivery, Inbound, Outbound, Sender
from storage.db import Database
from storage.migrate import upgrade


class FileChannel:
    """Delivers by appending "outbox_id text" lines to a file (fsynced)."""

    kind = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, outbound: Outbound) -> Delivery:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(f"{outbound.outbox_id} {outbound.markdown.splitlines()[0]}\n")
            fh.flush()
            os.fsync(fh.fileno())
        return Delivery(platform_id=f"line-{outbound.outbox_id}")


class ReconcilingFileChannel(FileChannel):
    async def reconcile(self, outbound: Outbound) -> Delivery | None:
        if not self.path.exists():
            return None
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.split(" ", 1)[0] == str(outbound.outbox_id):
                return Delivery(platform_id=f"line-{outbound.outbox_id}")
        return None


class LaterClock(SystemClock):
    def __init__(self, offset: timedelta) -> None:
        self.offset = offset

    def now(self):  # type: ignore[no-untyped-def]
        return super().now() + self.offset


async def main(argv: list[str]) -> None:
    url, sink, mode = argv[0], Path(argv[1]), argv[2]
    kill_at = argv[3] if len(argv) > 3 and not argv[3].startswith("--") else None
    reconcile = "--reconcile" in argv
    serve = "--serve" in argv

    def fault(point: str) -> None:
        if point == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        var_dir=Path(tempfile.mkdtemp()),
        kb_dir=SAMPLE_KB_DIR,
        catalog=SAMPLE_CATALOG,
        secret_key="crash-test",
    )
    clock = LaterClock(timedelta(seconds=120)) if mode == "restart" else SystemClock()
    database = Database(url)
    core = build_core(
        settings,
        clock=clock,
        database=database,
        policy=OutboxPolicy(lease_seconds=30, base_backoff=0.01, max_backoff=0.02),
        fault_hook=fault,
    )
    channel = ReconcilingFileChannel(sink) if reconcile else FileChannel(sink)
    core.registry.add(channel)
    if mode == "first":
        await upgrade(database)
        if serve:
            await core.dispatcher.start()
        result = await core.manager.handle(
            Inbound(
                channel="file",
                external_id="crash-1",
                sender=Sender(external_id="u1", display_name="Dana"),
                text="hi",
                thread_key="file:u1",
                reply_to={"to": "u1"},
            )
        )
        if serve:  # handed over: the serving dispatcher sends it (and is killed on the way)
            # the caller resumes before the dispatcher does: the row is still in its hands
            assert [h.row_id for h in core.dispatcher._handed] == list(result.outbox_ids)
            await asyncio.sleep(30)
            raise SystemExit("the dispatcher never reached the kill point")
    await core.dispatcher.drain()
    await database.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
