"""CPU cost of one message through the core: ConversationManager.handle plus the outbox
dispatcher delivering its replies to an in-memory channel, sequentially, on the database
given (SQLite file by default, or a PostgreSQL URL).

    .venv/bin/python benchmarks/core_handle.py [DATABASE_URL] [N]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time

from bot.clock import SystemClock
from bot.main import build_core
from bot.settings import SAMPLE_CATALOG, SAMPLE_KB_DIR, Settings
from bot.types import Inbound, Sender
from channels.memory import MemoryChannel
from storage.db import Database
from storage.migrate import upgrade


async def main(url: str, n: int) -> None:
    db = Database(url)
    await upgrade(db)
    core = build_core(
        Settings(_env_file=None, kb_dir=SAMPLE_KB_DIR, catalog=SAMPLE_CATALOG, secret_key="x"),
        clock=SystemClock(),
        database=db,
    )
    ch = MemoryChannel("webchat")
    core.registry.add(ch)
    texts = [
        "how do I connect to the vpn from home",
        "my outlook keeps crashing when I open attachments",
        "how do I set up email on my iphone",
        "the printer prints blank pages",
    ]
    # warm up
    for i in range(10):
        await core.manager.handle(
            Inbound(
                channel="webchat",
                external_id=f"w{i}",
                sender=Sender(external_id=f"w{i}"),
                text=texts[i % 4],
                thread_key=f"w{i}",
            )
        )
    await core.dispatcher.drain()
    t = time.perf_counter()
    c = time.process_time()

    for i in range(n):
        await core.manager.handle(
            Inbound(
                channel="webchat",
                external_id=f"x{i}",
                sender=Sender(external_id=f"u{i}"),
                text=texts[i % 4],
                thread_key=f"t{i}",
            )
        )
        if i % 10 == 9:
            await core.dispatcher.drain()
    await core.dispatcher.drain()

    wall = time.perf_counter() - t
    cpu_ms = (time.process_time() - c) / n * 1000
    print(f"{n / wall:.1f} messages/s (one at a time), {cpu_ms:.1f} ms of CPU per message")

    await db.dispose()


if __name__ == "__main__":
    default = f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/core.sqlite3"
    asyncio.run(
        main(
            sys.argv[1] if len(sys.argv) > 1 else default,
            int(sys.argv[2]) if len(sys.argv) > 2 else 200,
        )
    )
