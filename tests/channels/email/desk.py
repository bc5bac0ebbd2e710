"""The real core (``build_core``) with the live email channel between Dovecot and aiosmtpd.

A test reads like a transcript::

    await desk.deliver(mail("Subject: laptop", "It will not start"))
    await desk.wait_results(1)
    sent = await desk.flush()        # what the outbox sent to aiosmtpd
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bot.clock import SystemClock
from bot.main import Core, build_core
from bot.outbox import OutboxPolicy
from bot.types import HandleResult, Inbound
from channels.email.adapter import EmailChannel, IngestPolicy
from channels.email.imap import ImapSettings
from channels.email.parse import DEFAULT_LIMITS, ParseLimits
from channels.email.smtp import SmtpSettings
from storage.db import Database
from storage.models import Conversation, Message
from tests.channels.email.peers import PASSWORD, Captured, Dovecot, ImapDriver, SmtpPeer
from tests.conftest import make_settings

DESK = "desk@deskbot.test"
FAST = IngestPolicy(retry_seconds=0.05, reconnect_base=0.05, reconnect_max=0.5)

Handler = Callable[[Inbound], Awaitable[HandleResult]]


def mail(
    headers: str,
    body: str = "My laptop will not start since this morning, I cannot work at all.",
    *,
    sender: str = "Ann Example <ann@corp.test>",
    message_id: str | None = None,
) -> bytes:
    """A raw RFC 5322 mail to the desk; ``headers`` adds or overrides lines."""
    lines = [line for line in headers.strip().splitlines() if line.strip()]
    names = {line.split(":", 1)[0].lower() for line in lines}
    base = {
        "from": f"From: {sender}",
        "to": f"To: {DESK}",
        "subject": "Subject: laptop problem",
        "message-id": f"Message-ID: <{message_id or uuid.uuid4().hex}@corp.test>",
        "date": "Date: Mon, 02 Mar 2026 09:00:00 +0000",
    }
    lines += [value for key, value in base.items() if key not in names]
    return ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n") + "\r\n").encode()


@dataclass
class EmailDesk:
    core: Core
    dovecot: Dovecot
    user: str
    smtp: SmtpPeer
    folder: str = "INBOX"
    processed_folder: str | None = "Processed"
    channels: list[EmailChannel] = field(default_factory=list)
    results: list[HandleResult] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _sent_seen: int = 0

    # wiring ----------------------------------------------------------------------

    def imap_settings(self, **overrides: Any) -> ImapSettings:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.dovecot.port,
            "user": self.user,
            "password": PASSWORD,
            "ssl": False,
            "starttls": False,
            "folder": self.folder,
            "processed_folder": self.processed_folder,
            "failed_folder": "Failed",
            "poll_seconds": 30.0,
            "idle_renew_seconds": 300.0,
            "command_timeout": 10.0,
        }
        values.update(overrides)
        return ImapSettings(**values)

    def smtp_settings(self, **overrides: Any) -> SmtpSettings:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.smtp.port,
            "ssl": False,
            "starttls": False,
            "timeout": 10.0,
        }
        values.update(overrides)
        return SmtpSettings(**values)

    async def record(self, inbound: Inbound) -> HandleResult:
        result = await self.core.manager.handle(inbound)
        async with self._changed:
            self.results.append(result)
            self._changed.notify_all()
        return result

    def channel(
        self,
        *,
        handle: Handler | None = None,
        register: bool = True,
        policy: IngestPolicy = FAST,
        limits: ParseLimits = DEFAULT_LIMITS,
        **imap: Any,
    ) -> EmailChannel:
        channel = EmailChannel(
            desk_address=DESK,
            secret=self.core.settings.ensure_secret_key(),
            imap=self.imap_settings(**imap),
            smtp=self.smtp_settings(),
            handle=handle or self.record,
            claim_archive=self.core.manager.claim_archives,
            # as deskbot run wires it: on PostgreSQL one node at a time polls a mailbox
            mailbox_lock=self.core.manager.exclusive,
            policy=policy,
            parse_limits=limits,
        )
        if register and self.core.registry.get("email") is None:
            self.core.registry.add(channel)
        self.channels.append(channel)
        return channel

    async def start(self, **kwargs: Any) -> EmailChannel:
        channel = self.channel(**kwargs)
        await channel.start()
        await asyncio.wait_for(channel.connected.wait(), 10)
        await channel.wait_scans(1)
        return channel

    async def close(self) -> None:
        for channel in self.channels:
            await channel.stop()

    # transcript ----------------------------------------------------------------------

    def imap(self) -> ImapDriver:
        return ImapDriver(self.dovecot.port, self.user)

    async def deliver(self, *raws: bytes, folder: str | None = None, seen: bool = False) -> None:
        async with self.imap() as driver:
            for raw in raws:
                await driver.append(raw, folder or self.folder, seen=seen)

    async def wait_results(self, count: int, timeout: float = 40.0) -> list[HandleResult]:
        # a hang guard longer than one poll interval: a mail whose IDLE notification is
        # lost is still picked up by the rescan that follows every IDLE period (tests
        # about promptness pass their own, shorter timeout)
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.results) >= count), timeout
            )
        return list(self.results)

    async def flush(self) -> list[Captured]:
        """Deliver the outbox now; the mails aiosmtpd received since the last flush."""
        await self.core.dispatcher.drain()
        new = self.smtp.handler.received[self._sent_seen :]
        self._sent_seen = len(self.smtp.handler.received)
        return list(new)

    async def count(self, model: Any, *where: Any) -> int:
        async with self.core.db.read() as session:
            stmt = select(func.count()).select_from(model)
            for clause in where:
                stmt = stmt.where(clause)
            return int((await session.execute(stmt)).scalar_one())

    async def conversations(self) -> list[Conversation]:
        async with self.core.db.read() as session:
            return list(
                (await session.execute(select(Conversation).order_by(Conversation.id))).scalars()
            )

    async def messages(self, conversation_id: int) -> list[Message]:
        async with self.core.db.read() as session:
            stmt = select(Message).where(Message.conversation_id == conversation_id)
            return list((await session.execute(stmt.order_by(Message.id))).scalars())

    async def folder_count(self, folder: str) -> int:
        async with self.imap() as driver:
            return await driver.count(folder)


def make_core(database: Database, tmp_path: Path, **settings: Any) -> Core:
    values: dict[str, Any] = {
        "email_address": DESK,
        "imap_host": "127.0.0.1",
        "smtp_host": "127.0.0.1",
    }
    values.update(settings)
    return build_core(
        make_settings(tmp_path, **values),
        clock=SystemClock(),
        database=database,
        policy=OutboxPolicy(base_backoff=0.0, max_backoff=0.0, poll_seconds=0.05),
    )
