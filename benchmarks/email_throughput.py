"""Email throughput: Dovecot → tickets and outbox → aiosmtpd, each beside a bare baseline.

Run: .venv/bin/python benchmarks/email_throughput.py [--mails 1000] [--sends 1000]

- ingest: N mails APPENDed to a Dovecot mailbox, then the live EmailChannel feeds them to
  the real core (``build_core`` on SQLite: receipt, person, conversation, routing, outbox
  row, commit) and moves each to Processed. Beside it, a bare aioimaplib fetch of the same
  N mails (``UID FETCH … BODY.PEEK[]`` in batches of 100) measured in the same run.
- send: N outbound mails through ``EmailChannel.send`` (render + one reused aiosmtplib
  connection) to aiosmtpd in another thread, beside a bare ``aiosmtplib.SMTP.send_message``
  loop over one connection with the same mail.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiosmtplib  # noqa: E402
from aioimaplib import aioimaplib  # noqa: E402

from bot.clock import SystemClock  # noqa: E402
from bot.main import build_core  # noqa: E402
from bot.settings import SAMPLE_CATALOG, SAMPLE_KB_DIR, Settings  # noqa: E402
from bot.types import HandleResult, Inbound, Outbound  # noqa: E402
from channels.email.adapter import EmailChannel  # noqa: E402
from channels.email.convert import message_from_outbound  # noqa: E402
from channels.email.imap import ImapSettings, parse_bodies  # noqa: E402
from channels.email.smtp import SmtpSettings  # noqa: E402
from storage.db import Database  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
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


async def ingest(n: int) -> tuple[float, float]:
    with running_dovecot() as dovecot, tempfile.TemporaryDirectory() as tmp:
        user = dovecot.user()
        async with ImapDriver(dovecot.port, user) as driver:
            for i in range(n):
                raw = mail(
                    f"Subject: {SUBJECTS[i % len(SUBJECTS)]} #{i}",
                    f"Hello, my {SUBJECTS[i % len(SUBJECTS)]} since this morning. Case {i}.",
                    sender=f"Person {i} <p{i}@corp.test>",
                    message_id=f"bench-{i}",
                )
                await driver.append(raw)
        bare = await bare_fetch(dovecot.port, user, n)

        database = Database(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.sqlite3'}")
        await upgrade(database)
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            var_dir=Path(tmp) / "var",
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
                port=dovecot.port,
                user=user,
                password=PASSWORD,
                ssl=False,
                folder="INBOX",
                processed_folder="Processed",
                failed_folder="Failed",
            ),
            smtp=SmtpSettings(host="127.0.0.1", port=1, starttls=False),
            handle=handle,
        )
        started = time.perf_counter()
        await channel.start()
        await asyncio.wait_for(done.wait(), timeout=600)
        elapsed = time.perf_counter() - started
        await channel.stop()
        await database.dispose()
        assert sum(not r.duplicate for r in results) == n
        return n / elapsed, bare


def _outbound(i: int) -> Outbound:
    return Outbound(
        channel="email",
        address={"to": f"p{i}@corp.test", "subject": "laptop", "in_reply_to": f"x{i}@corp.test"},
        markdown="Thanks, we opened INC-000123 for you. We will reply by 14:00.",
        outbox_id=i + 1,
        conversation_id=i + 1,
        ticket_number="INC-000123",
    )


async def send(n: int, port: int) -> tuple[float, float]:
    bare_client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await bare_client.connect()
    message = message_from_outbound(_outbound(0), desk_address=DESK, secret="bench-secret")
    started = time.perf_counter()
    for _ in range(n):
        await bare_client.send_message(message, sender=DESK, recipients=["p0@corp.test"])
    bare = n / (time.perf_counter() - started)
    await bare_client.quit()

    async def unused(inbound: Inbound) -> HandleResult:
        raise AssertionError("no ingest in the send benchmark")

    channel = EmailChannel(
        desk_address=DESK,
        secret="bench-secret",
        imap=ImapSettings(host="127.0.0.1"),
        smtp=SmtpSettings(host="127.0.0.1", port=port, starttls=False),
        handle=unused,
    )
    started = time.perf_counter()
    for i in range(n):
        await channel.send(_outbound(i))
    ours = n / (time.perf_counter() - started)
    assert channel.smtp.connections == 1
    await channel.stop()
    return ours, bare


async def main_async(mails: int, sends: int) -> None:
    ours, bare = await ingest(mails)
    print(
        f"ingest  {mails} mails: channel+core {ours:7.1f} mails/s   bare IMAP fetch {bare:7.1f}/s"
    )
    port, proc = _smtp_process()
    try:
        ours_send, bare_send = await send(sends, port)
    finally:
        proc.terminate()
        proc.wait(10)
    print(
        f"send    {sends} mails: EmailChannel.send {ours_send:7.1f} mails/s   "
        f"bare aiosmtplib {bare_send:7.1f}/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mails", type=int, default=1000)
    parser.add_argument("--sends", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main_async(args.mails, args.sends))


if __name__ == "__main__":
    main()
