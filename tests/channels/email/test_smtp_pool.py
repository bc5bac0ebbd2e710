"""The SMTP connection pool against aiosmtpd: parallel sends, reuse, replacement, close."""

from __future__ import annotations

import asyncio
import email
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import policy

import pytest
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session

from bot.errors import PermanentError, TransientError
from bot.types import Inbound, Outbound
from channels.email.adapter import EmailChannel
from channels.email.imap import ImapSettings
from channels.email.smtp import SmtpSender, SmtpSettings
from tests.channels.email.desk import DESK
from tests.channels.email.peers import CaptureHandler, SmtpPeer
from tests.conftest import until


@dataclass
class PoolHandler(CaptureHandler):
    """Also counts transactions in DATA at once (each held ``data_seconds``), remembers
    every server session (to cut them), can cut the line at MAIL FROM, counts QUITs."""

    data_seconds: float = 0.0
    in_data: int = 0
    most_in_data: int = 0
    servers: list[SmtpServer] = field(default_factory=list)
    drop_at_mail: int = 0
    quits: int = 0

    async def handle_EHLO(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: SmtpServer,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        self.servers.append(server)
        return await super().handle_EHLO(server, session, envelope, hostname, responses)

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: SmtpServer,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.drop_at_mail:
            self.drop_at_mail -= 1
            assert server.transport is not None
            server.transport.close()  # the server went away under a reused connection
            return "421 closing"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SmtpServer, session: Session, envelope: Envelope
    ) -> str:
        self.in_data += 1
        self.most_in_data = max(self.most_in_data, self.in_data)
        try:
            await asyncio.sleep(self.data_seconds)
            return await super().handle_DATA(server, session, envelope)
        finally:
            self.in_data -= 1

    async def handle_QUIT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SmtpServer, session: Session, envelope: Envelope
    ) -> str:
        self.quits += 1
        return "221 Bye"


@pytest.fixture
async def peer() -> AsyncIterator[SmtpPeer]:
    server = SmtpPeer()
    server.handler = PoolHandler()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def handler_of(peer: SmtpPeer) -> PoolHandler:
    assert isinstance(peer.handler, PoolHandler)
    return peer.handler


def sender(peer: SmtpPeer, connections: int) -> SmtpSender:
    settings = SmtpSettings(host="127.0.0.1", port=peer.port, starttls=False, timeout=10.0)
    return SmtpSender(settings, connections=connections)


def mail(i: int) -> bytes:
    return f"From: {DESK}\r\nTo: ann@corp.test\r\nMessage-ID: <m{i}@x>\r\n\r\nmail {i}\r\n".encode()


def received_ids(peer: SmtpPeer) -> list[str]:
    return [
        str(email.message_from_bytes(c.data, policy=policy.default)["Message-ID"])
        for c in peer.handler.received
    ]


async def send_all(pool: SmtpSender, numbers: range) -> None:
    await asyncio.gather(
        *(pool.send(mail(i), sender=DESK, recipients=["ann@corp.test"]) for i in numbers)
    )


async def test_concurrent_sends_go_out_in_parallel_over_at_most_n_reused_connections(
    peer: SmtpPeer,
) -> None:
    handler = handler_of(peer)
    handler.data_seconds = 0.05
    pool = sender(peer, 4)
    await send_all(pool, range(20))
    assert sorted(received_ids(peer)) == sorted(f"<m{i}@x>" for i in range(20))
    assert handler.most_in_data == 4  # parallel, and bounded by the pool
    assert pool.connections == handler.connections == 4
    await send_all(pool, range(20, 40))  # the same four connections carry the next mails
    assert len(handler.received) == 40
    assert pool.connections == handler.connections == 4
    await pool.close()
    assert handler.quits == 4


async def test_sequential_sends_keep_one_connection(peer: SmtpPeer) -> None:
    pool = sender(peer, 4)
    for i in range(5):
        await pool.send(mail(i), sender=DESK, recipients=["ann@corp.test"])
    assert pool.connections == peer.handler.connections == 1
    await pool.close()


async def test_connections_the_server_closed_while_idle_are_replaced(peer: SmtpPeer) -> None:
    handler = handler_of(peer)
    handler.data_seconds = 0.02
    pool = sender(peer, 3)
    await send_all(pool, range(3))
    assert pool.connections == 3
    for server in handler.servers:  # the server times out its idle connections
        assert server.transport is not None
        server.transport.close()
    await send_all(pool, range(3, 6))
    assert sorted(received_ids(peer)) == sorted(f"<m{i}@x>" for i in range(6))
    assert pool.connections == handler.connections == 6
    await pool.close()


async def test_a_connection_cut_before_data_is_dropped_and_the_mail_retried_once(
    peer: SmtpPeer,
) -> None:
    handler = handler_of(peer)
    pool = sender(peer, 2)
    await pool.send(mail(1), sender=DESK, recipients=["ann@corp.test"])
    handler.drop_at_mail = 1  # the reused connection dies at MAIL FROM
    await pool.send(mail(2), sender=DESK, recipients=["ann@corp.test"])
    assert received_ids(peer) == ["<m1@x>", "<m2@x>"]
    assert pool.connections == 2
    await pool.send(mail(3), sender=DESK, recipients=["ann@corp.test"])
    assert pool.connections == 2  # the replacement is reused, the broken one is gone
    # a fresh connection that fails is not retried: the outbox defers the row
    handler.drop_at_mail = 1
    await pool.close()
    with pytest.raises(TransientError):
        await pool.send(mail(4), sender=DESK, recipients=["ann@corp.test"])
    assert len(handler.received) == 3
    await pool.close()


async def test_replies_under_concurrency_are_translated_and_the_pool_recovers(
    peer: SmtpPeer,
) -> None:
    handler = handler_of(peer)
    handler.data_seconds = 0.02
    handler.replies += ["450 mailbox busy", "550 no such user"]
    pool = sender(peer, 4)
    results = await asyncio.gather(
        *(pool.send(mail(i), sender=DESK, recipients=["ann@corp.test"]) for i in range(6)),
        return_exceptions=True,
    )
    errors = sorted(type(r).__name__ for r in results if isinstance(r, Exception))
    assert errors == [PermanentError.__name__, TransientError.__name__]
    assert len(handler.received) == 4
    await send_all(pool, range(6, 14))
    assert len(handler.received) == 12
    assert handler.most_in_data <= 4
    await pool.close()


async def test_a_cancelled_send_frees_its_slot_and_drops_its_connection(peer: SmtpPeer) -> None:
    handler = handler_of(peer)
    handler.data_seconds = 5.0
    pool = sender(peer, 1)
    stuck = asyncio.create_task(pool.send(mail(1), sender=DESK, recipients=["ann@corp.test"]))
    await until(lambda: handler.in_data == 1)
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    handler.data_seconds = 0.0
    await asyncio.wait_for(pool.send(mail(2), sender=DESK, recipients=["ann@corp.test"]), 5)
    assert pool.connections == 2
    await pool.close()


async def test_close_waits_for_sends_in_flight_then_quits_every_connection(
    peer: SmtpPeer,
) -> None:
    handler = handler_of(peer)
    handler.data_seconds = 0.1
    pool = sender(peer, 3)
    sending = asyncio.create_task(send_all(pool, range(3)))
    await until(lambda: handler.in_data == 3)
    await pool.close()
    assert sending.done() and len(handler.received) == 3
    assert handler.quits == 3
    # a send after close opens a connection again
    await pool.send(mail(9), sender=DESK, recipients=["ann@corp.test"])
    assert pool.connections == 4
    await pool.close()


def test_a_pool_needs_a_connection() -> None:
    with pytest.raises(ValueError):
        SmtpSender(SmtpSettings(host="127.0.0.1"), connections=0)


async def test_channel_send_concurrency_is_the_pool_size(peer: SmtpPeer) -> None:
    async def unused(inbound: Inbound) -> None:
        raise AssertionError("no ingest here")

    handler = handler_of(peer)
    handler.data_seconds = 0.05
    channel = EmailChannel(
        desk_address=DESK,
        secret="pool-secret",
        imap=ImapSettings(host="127.0.0.1"),
        smtp=SmtpSettings(host="127.0.0.1", port=peer.port, starttls=False, timeout=10.0),
        handle=unused,  # type: ignore[arg-type]
        smtp_connections=3,
    )
    assert channel.send_concurrency == 3
    outbounds = [
        Outbound(
            channel="email",
            address={"to": f"p{i}@corp.test", "name": "Zoë"},
            markdown="We are on it.",
            outbox_id=i,
            conversation_id=i,
        )
        for i in range(1, 10)
    ]
    deliveries = await asyncio.gather(*(channel.send(o) for o in outbounds))
    assert handler.most_in_data == 3 and channel.smtp.connections == 3
    assert sorted(d.platform_id for d in deliveries) == sorted(
        str(c.message["Message-ID"]).strip("<>") for c in handler.received
    )
    assert sorted(c.rcpt_tos[0] for c in handler.received) == [
        f"p{i}@corp.test" for i in range(1, 10)
    ]
    await channel.stop()
