"""Email throughput: Dovecot → tickets and outbox → aiosmtpd, each beside a bare baseline.

Run: .venv/bin/python benchmarks/email_throughput.py [--mails 1000] [--sends 1000]

- ingest: N mails APPENDed to a Dovecot mailbox, each from a new sender and each a
  complete report that opens a ticket (the run checks that every one did), then the live
  EmailChannel feeds them to the real core (``build_core`` on SQLite, or with
  ``--postgres URL`` on a scratch PostgreSQL database: receipt, person, conversation,
  routing, ticket, outbox row, commit), claims the move and holds the mailbox as
  ``deskbot run`` wires them (``claim_archive``, ``mailbox_lock``) and moves each to
  Processed. Beside it, a bare aioimaplib fetch of the same N mails (``UID FETCH …
  BODY.PEEK[]`` in batches of 100) measured in the same run. The CPU time of this
  process (all threads) while the channel works is printed per mail; Dovecot's is not in
  it.
- send: N outbox rows (one reply in each of N conversations, queued with the core's
  ``enqueue_reply``) delivered by the core's ``OutboxDispatcher`` (claim, stamp, send,
  settle on SQLite) through ``EmailChannel`` (render + a pool of ``--connections`` reused
  aiosmtplib connections) to aiosmtpd's ``Sink`` in a separate process. Beside it, in the
  same run against the same server: ``EmailChannel.send`` alone with ``--connections``
  calls in flight (no database), and bare ``aiosmtplib.SMTP.sendmail`` loops of the same
  rendered bytes over one connection and over ``--connections`` connections.
  The four send paths are measured ``--rounds`` times, interleaved, and reported as the
  median (min-max). ``--mails 0`` skips ingest, ``--sends 0`` skips sending.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiosmtplib  # noqa: E402
from aioimaplib import aioimaplib  # noqa: E402

from bot.clock import SystemClock  # noqa: E402
from bot.main import build_core  # noqa: E402
from bot.outgoing import enqueue_reply  # noqa: E402
from bot.settings import SAMPLE_CATALOG, SAMPLE_KB_DIR, Settings  # noqa: E402
from bot.turn import Reply  # noqa: E402
from bot.types import Delivery, HandleResult, Inbound, Outbound  # noqa: E402
from channels.email.adapter import EmailChannel  # noqa: E402
from channels.email.convert import render_outbound  # noqa: E402
from channels.email.imap import ImapSettings, parse_bodies  # noqa: E402
from channels.email.smtp import SmtpSettings  # noqa: E402
from storage.db import Database  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from storage.repositories import Conversations, Outbox, People  # noqa: E402
from tests.channels.email.desk import DESK, mail  # noqa: E402
from tests.channels.email.peers import PASSWORD, ImapDriver, running_dovecot  # noqa: E402

SUBJECTS = ["laptop will not start", "vpn drops", "printer jam", "password expired"]


def _smtp_process() -> tuple[int, subprocess.Popen[bytes]]:
    """aiosmtpd's own command line with its Sink handler, in a separate process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            f"127.0.0.1:{port}",
            "-c",
            "aiosmtpd.handlers.Sink",
        ],
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port, proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("aiosmtpd did not start")


async def bare_fetch(port: int, user: str, n: int) -> float:
    client = aioimaplib.IMAP4(host="127.0.0.1", port=port, timeout=60)
    await client.wait_hello_from_server()
    await client.login(user, PASSWORD)
    await client.select("INBOX")
    started = time.perf_counter()
    got = 0
    for first in range(1, n + 1, 100):
        response = await client.uid("fetch", f"{first}:{first + 99}", "(UID BODY.PEEK[])")
        got += len(parse_bodies(response.lines))
    elapsed = time.perf_counter() - started
    await client.logout()
    assert got == n, (got, n)
    return n / elapsed


@contextlib.asynccontextmanager
async def scratch_database(tmp: Path, postgres: str | None) -> AsyncIterator[Database]:
    """A migrated, empty database: a SQLite file, or a new database on the PostgreSQL
    server at ``postgres`` (an admin URL, dropped afterwards)."""
    if postgres is None:
        database = Database(f"sqlite+aiosqlite:///{tmp / 'bench.sqlite3'}")
        await upgrade(database)
        try:
            yield database
        finally:
            await database.dispose()
        return
    import asyncpg

    name = f"deskbot_bench_{uuid.uuid4().hex[:8]}"
    admin = postgres.replace("postgresql+asyncpg://", "postgresql://") + "/postgres"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        database = Database(f"{postgres}/{name}")
        try:
            await upgrade(database)
            yield database
        finally:
            await database.dispose()
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def ingest(n: int, postgres: str | None = None) -> tuple[float, float, float]:
    with running_dovecot() as dovecot, tempfile.TemporaryDirectory() as tmp:
        user = dovecot.user()
        async with ImapDriver(dovecot.port, user) as driver:
            for i in range(n):
                raw = mail(
                    f"Subject: {SUBJECTS[i % len(SUBJECTS)]} #{i}",
                    # a complete report: the service, who is affected and how badly, so
                    # each mail opens a ticket at once (and is acknowledged with its number)
                    f"Hello, my {SUBJECTS[i % len(SUBJECTS)]} since this morning and I "
                    f"cannot work at all. It is only me. Case {i}.",
                    sender=f"Person {i} <p{i}@corp.test>",
                    message_id=f"bench-{i}",
                )
                await driver.append(raw)
        bare = await bare_fetch(dovecot.port, user, n)

        async with scratch_database(Path(tmp), postgres) as database:
            return await _ingest_into(database, dovecot.port, user, n, Path(tmp), bare)


async def _ingest_into(
    database: Database, port: int, user: str, n: int, tmp: Path, bare: float
) -> tuple[float, float, float]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        var_dir=tmp / "var",
        kb_dir=SAMPLE_KB_DIR,
        catalog=SAMPLE_CATALOG,
        secret_key="bench-secret",
        auto_reply_cap_per_hour=10_000,
    )
    core = build_core(settings, clock=SystemClock(), database=database)
    done = asyncio.Event()
    results: list[HandleResult] = []

    async def handle(inbound: Inbound) -> HandleResult:
        result = await core.manager.handle(inbound)
        results.append(result)
        if len(results) >= n:
            done.set()
        return result

    channel = EmailChannel(
        desk_address=DESK,
        secret="bench-secret",
        imap=ImapSettings(
            host="127.0.0.1",
            port=port,
            user=user,
            password=PASSWORD,
            ssl=False,
            folder="INBOX",
            processed_folder="Processed",
            failed_folder="Failed",
        ),
        smtp=SmtpSettings(host="127.0.0.1", port=1, starttls=False),
        handle=handle,
        claim_archive=core.manager.claim_archives,
        mailbox_lock=core.manager.exclusive,  # as deskbot run wires it (a lock on PostgreSQL)
    )
    started = time.perf_counter()
    cpu = time.process_time()
    await channel.start()
    await asyncio.wait_for(done.wait(), timeout=600)
    # the last batch's move is part of the work
    await channel.wait_scans(channel.scans + 1, timeout=600)
    elapsed = time.perf_counter() - started
    cpu_ms = (time.process_time() - cpu) / n * 1000
    await channel.stop()
    assert sum(not r.duplicate for r in results) == n
    opened = sum(r.route == "ticket.opened" for r in results)
    assert opened == n, f"only {opened} of {n} mails opened a ticket"
    return n / elapsed, bare, cpu_ms


def _outbound(i: int) -> Outbound:
    return Outbound(
        channel="email",
        address={"to": f"p{i}@corp.test", "subject": "laptop", "in_reply_to": f"x{i}@corp.test"},
        markdown="Thanks, we opened INC-000123 for you. We will reply by 14:00.",
        outbox_id=i + 1,
        conversation_id=i + 1,
        ticket_number="INC-000123",
    )


@dataclass(slots=True)
class SendFigures:
    """Mails/s of each send path, one entry per round."""

    outbox: list[float] = field(default_factory=list)
    channel: list[float] = field(default_factory=list)
    bare_one: list[float] = field(default_factory=list)
    bare_pool: list[float] = field(default_factory=list)
    connections_opened: int = 0  # the most any measured pool opened
    most_in_flight: int = 0  # the most concurrent EmailChannel.send calls the dispatcher made


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} ({min(values):.0f}-{max(values):.0f})"


def _send_channel(port: int, connections: int) -> EmailChannel:
    async def unused(inbound: Inbound) -> HandleResult:
        raise AssertionError("no ingest in the send benchmark")

    return EmailChannel(
        desk_address=DESK,
        secret="bench-secret",
        imap=ImapSettings(host="127.0.0.1"),
        smtp=SmtpSettings(host="127.0.0.1", port=port, starttls=False),
        handle=unused,
        smtp_connections=connections,
    )


async def bare_send(n: int, port: int, connections: int, data: bytes) -> float:
    """``aiosmtplib.SMTP.sendmail`` of ready bytes, ``connections`` connections in parallel."""
    clients = [
        aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        for _ in range(connections)
    ]
    for client in clients:
        await client.connect()

    async def loop(client: aiosmtplib.SMTP, count: int) -> None:
        for _ in range(count):
            await client.sendmail(DESK, ["p0@corp.test"], data)

    shares = [n // connections + (k < n % connections) for k in range(connections)]
    started = time.perf_counter()
    await asyncio.gather(*(loop(c, share) for c, share in zip(clients, shares, strict=True)))
    rate = n / (time.perf_counter() - started)
    for client in clients:
        await client.quit()
    return rate


class _InFlight:
    """Counts concurrent ``channel.send`` calls (wraps the channel's bound method)."""

    def __init__(self, channel: EmailChannel) -> None:
        self.send = channel.send
        self.now = 0
        self.most = 0

    async def __call__(self, outbound: Outbound) -> Delivery:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            return await self.send(outbound)
        finally:
            self.now -= 1


async def outbox_send(n: int, port: int, connections: int) -> tuple[float, int, int]:
    """N outbox rows (one reply in each of N conversations, queued as the core queues them)
    delivered by the core's ``OutboxDispatcher`` to aiosmtpd, on SQLite."""
    with tempfile.TemporaryDirectory() as tmp:
        database = Database(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.sqlite3'}")
        await upgrade(database)
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            var_dir=Path(tmp) / "var",
            kb_dir=SAMPLE_KB_DIR,
            catalog=SAMPLE_CATALOG,
            secret_key="bench-secret",
        )
        core = build_core(settings, clock=SystemClock(), database=database)
        channel = _send_channel(port, connections)
        in_flight = _InFlight(channel)
        channel.send = in_flight  # type: ignore[method-assign]
        core.registry.add(channel)
        now = core.clock.now()
        async with core.db.transaction() as session:
            for i in range(n):
                person = await People(session).ensure_by_email(
                    f"p{i}@corp.test", display_name=f"Person {i}", now=now
                )
                conversation, _ = await Conversations(session).find_or_open(
                    channel="email",
                    thread_key=f"msgid:x{i}@corp.test",
                    person_id=person.id,
                    reply_to={
                        "to": f"p{i}@corp.test",
                        "name": f"Person {i}",
                        "subject": SUBJECTS[i % len(SUBJECTS)],
                        "in_reply_to": f"x{i}@corp.test",
                        "references": [f"x{i}@corp.test"],
                    },
                    now=now,
                )
                await enqueue_reply(
                    session,
                    conversation,
                    Reply(
                        markdown="Thanks, we opened INC-000123 for you. We will reply by 14:00.",
                        ticket_number="INC-000123",
                    ),
                    now=now,
                )
        started = time.perf_counter()
        await core.dispatcher.drain(timeout=600)
        rate = n / (time.perf_counter() - started)
        async with core.db.read() as session:
            statuses = await Outbox(session).count_by_status()
        assert statuses == {"sent": n}, statuses
        opened = channel.smtp.connections
        assert opened <= connections, opened
        await channel.stop()
        await database.dispose()
        return rate, opened, in_flight.most


async def channel_send(n: int, port: int, connections: int) -> tuple[float, int]:
    """``EmailChannel.send`` (render + pool), ``connections`` calls in flight, no database."""
    channel = _send_channel(port, connections)
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            await channel.send(_outbound(i))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    rate = n / (time.perf_counter() - started)
    opened = channel.smtp.connections
    assert opened <= connections, opened
    await channel.stop()
    return rate, opened


async def send(n: int, port: int, connections: int, rounds: int) -> SendFigures:
    """The four paths one after the other, ``rounds`` times, against one aiosmtpd process
    (interleaved, so a burst of load from elsewhere on the machine hits all of them)."""
    data = render_outbound(_outbound(0), desk_address=DESK, secret="bench-secret").data
    figures = SendFigures()
    for _ in range(rounds):
        figures.bare_one.append(await bare_send(n, port, 1, data))
        figures.bare_pool.append(await bare_send(n, port, connections, data))
        rate, opened = await channel_send(n, port, connections)
        figures.channel.append(rate)
        rate, outbox_opened, in_flight = await outbox_send(n, port, connections)
        figures.outbox.append(rate)
        figures.connections_opened = max(figures.connections_opened, opened, outbox_opened)
        figures.most_in_flight = max(figures.most_in_flight, in_flight)
    return figures


async def main_async(
    mails: int, sends: int, connections: int, rounds: int, postgres: str | None
) -> None:
    if mails:
        ours, bare, cpu_ms = await ingest(mails, postgres)
        print(
            f"ingest  {mails} mails ({'PostgreSQL' if postgres else 'SQLite'}): "
            f"channel+core {ours:7.1f} mails/s "
            f"({cpu_ms:.1f} ms CPU per mail)   bare IMAP fetch {bare:7.1f}/s"
        )
    if not sends:
        return
    port, proc = _smtp_process()
    try:
        f = await send(sends, port, connections, rounds)
    finally:
        proc.terminate()
        proc.wait(10)
    print(
        f"send    {sends} mails, {connections} SMTP connections, median of {rounds} rounds "
        f"(min-max), mails/s:"
    )
    print(
        f"        outbox -> aiosmtpd (OutboxDispatcher, SQLite)  {_median(f.outbox)}   "
        f"[{f.most_in_flight} sends in flight at most, {f.connections_opened} connections opened]"
    )
    print(f"        EmailChannel.send, no database             {_median(f.channel)}")
    print(f"        bare aiosmtplib sendmail, 1 connection     {_median(f.bare_one)}")
    print(f"        bare aiosmtplib sendmail, {connections} connections    {_median(f.bare_pool)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mails", type=int, default=1000)
    parser.add_argument("--sends", type=int, default=1000)
    parser.add_argument(
        "--connections", type=int, default=4, help="SMTP pool size (EmailChannel.send_concurrency)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="send measurements per path")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="ingest into a scratch database on this PostgreSQL server "
        "(e.g. postgresql+asyncpg://postgres@127.0.0.1:5432) instead of SQLite",
    )
    args = parser.parse_args()
    asyncio.run(main_async(args.mails, args.sends, args.connections, args.rounds, args.postgres))


if __name__ == "__main__":
    main()
