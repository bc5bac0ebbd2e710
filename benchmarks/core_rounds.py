"""CPU per message of the core's rounds on PostgreSQL, by round size, beside a bare asyncpg
transaction per round measured in the same run.

    .venv/bin/python benchmarks/core_rounds.py [--sizes 1 16 64 128] [--messages 1024]

What runs: a scratch PostgreSQL database (created, migrated, dropped at the end), the
core built as ``deskbot run`` builds it (``build_core``: real router, sample knowledge
base), and 256 web chat visitors, each of whom has asked once already (a warm-up round
that creates their people and conversations). Then, for each size k, ``--messages``
questions are handed to ``ConversationManager.handle`` k at a time, all k together, so
each batch is one round of k messages (one per visitor). The outbox dispatcher is not
started: the replies' rows are written, not sent. The figure is this process's CPU per
message (PostgreSQL's own CPU is not in it), so a round's fixed cost shows as the
difference between small rounds and large ones.

Baseline, in the same run: a bare asyncpg connection doing one transaction per round that
inserts k rows of three columns with one ``unnest`` statement (the least one round of k
messages must do).

The machine's speed changes over the day; compare only figures of the same run, or runs
interleaved with the code before a change.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from webchat_load import QUESTIONS  # noqa: E402  (the web chat benchmark's questions)

from bot.main import build_core  # noqa: E402
from bot.settings import SAMPLE_CATALOG, SAMPLE_KB_DIR, Settings  # noqa: E402
from bot.types import Inbound, Sender  # noqa: E402
from storage.migrate import upgrade  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432"
VISITORS = 256


async def bare_rounds(dsn: str, size: int, messages: int) -> float:
    """CPU ms per message of one asyncpg transaction per round of ``size`` rows."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TEMP TABLE bare (id bigserial PRIMARY KEY, visitor text, body text, n int)"
        )
        rounds = max(4, messages // size)
        started = time.process_time()
        for r in range(rounds):
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO bare (visitor, body, n) "
                    "SELECT * FROM unnest($1::text[], $2::text[], $3::int[])",
                    [f"v{i}" for i in range(size)],
                    [QUESTIONS[(r + i) % len(QUESTIONS)] for i in range(size)],
                    list(range(size)),
                )
        return (time.process_time() - started) * 1000 / (rounds * size)
    finally:
        await conn.close()


async def core_rounds(url: str, sizes: list[int], messages: int) -> dict[int, float]:
    with tempfile.TemporaryDirectory() as var:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=url,
            var_dir=Path(var),
            kb_dir=SAMPLE_KB_DIR,
            catalog=SAMPLE_CATALOG,
            secret_key="benchmark-secret-key",
            log_level="WARNING",
        )
        core = build_core(settings)
        await upgrade(core.db)
        visitors = [uuid.uuid4().hex for _ in range(VISITORS)]
        sent = 0

        def inbound(visitor: str, text: str) -> Inbound:
            nonlocal sent
            sent += 1
            return Inbound(
                channel="webchat",
                external_id=f"{visitor}:{sent}",
                sender=Sender(external_id=visitor),
                text=text,
                thread_key=f"visitor:{visitor}",
                reply_to={"visitor": visitor},
            )

        await asyncio.gather(*(core.manager.handle(inbound(v, QUESTIONS[0])) for v in visitors))
        out: dict[int, float] = {}
        for size in sizes:
            rounds = max(4, messages // size)
            started = time.process_time()
            for r in range(rounds):
                batch = [visitors[(r * size + i) % VISITORS] for i in range(size)]
                await asyncio.gather(
                    *(
                        core.manager.handle(inbound(v, QUESTIONS[(r + i) % len(QUESTIONS)]))
                        for i, v in enumerate(batch)
                    )
                )
            out[size] = (time.process_time() - started) * 1000 / (rounds * size)
        await core.db.dispose()
        return out


async def main(args: argparse.Namespace) -> None:
    if any(size > VISITORS for size in args.sizes):
        raise SystemExit(f"a round holds one message per visitor: sizes up to {VISITORS}")
    name = f"deskbot_rounds_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(f"{PG}/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        core = await core_rounds(
            f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}", args.sizes, args.messages
        )
        bare = {size: await bare_rounds(f"{PG}/{name}", size, args.messages) for size in args.sizes}
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print(f"\n{args.messages} messages per size, {VISITORS} returning web chat visitors\n")
    print(
        "| round size | deskbot: CPU ms per message | deskbot: ms per round "
        "| bare asyncpg: CPU ms per message |"
    )
    print("| ---: | ---: | ---: | ---: |")
    for size in args.sizes:
        print(f"| {size} | {core[size]:.3f} | {core[size] * size:.2f} | {bare[size]:.3f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 64, 128])
    parser.add_argument("--messages", type=int, default=1024, help="messages per size")
    asyncio.run(main(parser.parse_args()))
