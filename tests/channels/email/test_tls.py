"""The email channel's TLS settings against real peers (issue #7).

IMAP: a Dovecot with ``ssl = yes`` (STARTTLS on the plain port), an ``imaps`` port and
``disable_plaintext_auth = yes``, reached on 127.0.0.2 where it refuses every login that
did not go through TLS (see tls_peers.py): a test that logs in there cannot have done so
in plaintext, and a control test shows the plaintext login being refused.

SMTP: aiosmtpd with ``require_starttls=True`` (MAIL before STARTTLS is answered 530) and
with implicit TLS; the capture records the TLS version each mail arrived over, as the
server saw it.

Certificates come from a throw-away CA made by trustme at test time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aioimaplib import aioimaplib

from bot.errors import ConfigError, PermanentError, TransientError
from bot.types import HandleResult, Inbound, Outbound
from channels.email.adapter import EmailChannel, IngestPolicy
from channels.email.imap import ImapConnection, ImapConnectionError, ImapSettings
from channels.email.smtp import SmtpSender, SmtpSettings
from storage.db import Database
from tests.channels.email.desk import DESK, EmailDesk, mail, make_core
from tests.channels.email.peers import PASSWORD, Dovecot, SmtpPeer, dovecot_available
from tests.channels.email.tls_peers import (
    SECURE_HOST,
    Pki,
    TlsDovecot,
    TlsSmtpPeer,
    make_pki,
    running_tls_dovecot,
)
from tests.conftest import need_peer

TLS_VERSIONS = {"TLSv1.2", "TLSv1.3"}
NOT_TRUSTED = "CERTIFICATE_VERIFY_FAILED"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture(scope="module")
def tls_dovecot(pki: Pki) -> Iterator[TlsDovecot]:
    need_peer(dovecot_available(), "Dovecot is not installed (apt-get install -y dovecot-imapd)")
    with running_tls_dovecot(pki) as server:
        yield server


def imap_settings(port: int, user: str, **overrides: Any) -> ImapSettings:
    values: dict[str, Any] = {
        "host": SECURE_HOST,
        "port": port,
        "user": user,
        "password": PASSWORD,
        "ssl": False,
        "starttls": False,
        "command_timeout": 5.0,
        "connect_timeout": 5.0,
    }
    values.update(overrides)
    return ImapSettings(**values)


async def connect(settings: ImapSettings) -> ImapConnection:
    """A logged-in connection; on failure the transport is closed before re-raising."""
    connection = ImapConnection(settings)
    try:
        await connection.connect()
    except BaseException:
        await connection.logout()
        raise
    return connection


def tls_version(connection: ImapConnection) -> str | None:
    ssl_object = connection.client.protocol.transport.get_extra_info("ssl_object")
    return None if ssl_object is None else str(ssl_object.version())


# --- IMAP: the peer itself ---------------------------------------------------------------


@pytest.mark.dovecot
async def test_tls_dovecot_starts_cleanly_and_offers_starttls_only_before_login(
    tls_dovecot: TlsDovecot,
) -> None:
    assert tls_dovecot.log_problems() == []
    assert await tls_dovecot.wait_log("starting up")
    reader, writer = await asyncio.open_connection(SECURE_HOST, tls_dovecot.port)
    try:
        greeting = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    assert greeting.startswith(b"* OK")
    assert b"STARTTLS" in greeting and b"LOGINDISABLED" in greeting, greeting


# --- IMAP STARTTLS ---------------------------------------------------------------------


@pytest.mark.dovecot
async def test_imap_plaintext_login_is_refused_by_the_tls_dovecot(tls_dovecot: TlsDovecot) -> None:
    """The control for the STARTTLS tests: without TLS the same login fails, and the
    client does not even send the password (the server says LOGINDISABLED)."""
    user = tls_dovecot.user()
    with pytest.raises(ConfigError, match="refuses login without TLS"):
        await connect(imap_settings(tls_dovecot.port, user))
    # the server's own refusal, for a client that sends LOGIN anyway
    client = aioimaplib.IMAP4(host=SECURE_HOST, port=tls_dovecot.port, timeout=5)
    try:
        await client.wait_hello_from_server()
        response = await client.login(user, PASSWORD)
    finally:
        await client.logout()
    assert response.result == "NO" and b"PRIVACYREQUIRED" in b" ".join(response.lines)


@pytest.mark.dovecot
async def test_imap_starttls_upgrades_before_login_and_refreshes_capabilities(
    tls_dovecot: TlsDovecot, pki: Pki
) -> None:
    user = tls_dovecot.user()
    settings = imap_settings(
        tls_dovecot.port, user, starttls=True, ssl_context=pki.client_context()
    )
    connection = await connect(settings)
    try:
        assert tls_version(connection) in TLS_VERSIONS
        # capabilities were asked again over TLS (RFC 3501 6.2.1): the pre-TLS list had
        # STARTTLS and LOGINDISABLED, the one after the handshake has neither
        assert not connection.has("STARTTLS") and not connection.has("LOGINDISABLED")
        assert connection.has("IMAP4rev1")
        assert await connection.select("INBOX") > 0
    finally:
        await connection.logout()
    [login] = await tls_dovecot.wait_log(f"Login: user=<{user}>", f"lip={SECURE_HOST}")
    assert ", TLS," in login, login


@pytest.mark.dovecot
async def test_imap_starttls_with_an_untrusted_certificate_is_a_transient_error(
    tls_dovecot: TlsDovecot,
) -> None:
    """No ``ssl_context``: the system's CAs, which do not know the test CA."""
    settings = imap_settings(tls_dovecot.port, tls_dovecot.user(), starttls=True)
    with pytest.raises(ImapConnectionError, match="TLS handshake failed") as failed:
        await connect(settings)
    assert NOT_TRUSTED in str(failed.value)
    assert not isinstance(failed.value, ConfigError)


@pytest.mark.dovecot
async def test_imap_starttls_not_offered_is_a_config_error(dovecot: Dovecot, pki: Pki) -> None:
    """The plain Dovecot (``ssl = no``) does not offer STARTTLS: no silent plaintext."""
    settings = imap_settings(
        dovecot.port,
        dovecot.user(),
        host="127.0.0.1",
        starttls=True,
        ssl_context=pki.client_context(),
    )
    with pytest.raises(ConfigError, match="does not offer STARTTLS"):
        await connect(settings)


# --- IMAP implicit TLS -----------------------------------------------------------------


@pytest.mark.dovecot
async def test_imap_implicit_tls_on_the_imaps_port(tls_dovecot: TlsDovecot, pki: Pki) -> None:
    user = tls_dovecot.user()
    settings = imap_settings(
        tls_dovecot.imaps_port, user, ssl=True, ssl_context=pki.client_context()
    )
    connection = await connect(settings)
    try:
        assert tls_version(connection) in TLS_VERSIONS
        assert await connection.select("INBOX") > 0
    finally:
        await connection.logout()
    [login] = await tls_dovecot.wait_log(f"Login: user=<{user}>", f"lip={SECURE_HOST}")
    assert ", TLS," in login, login


@pytest.mark.dovecot
async def test_imap_implicit_tls_with_an_untrusted_certificate_is_a_transient_error(
    tls_dovecot: TlsDovecot,
) -> None:
    settings = imap_settings(tls_dovecot.imaps_port, tls_dovecot.user(), ssl=True)
    with pytest.raises(ImapConnectionError, match="greeting failed") as failed:
        await connect(settings)
    assert NOT_TRUSTED in str(failed.value)
    assert isinstance(failed.value, TransientError)


# --- IMAP: the live channel --------------------------------------------------------------


@pytest.fixture
async def tls_desk(
    sqlite_database: Database, tmp_path: Path, tls_dovecot: TlsDovecot, smtp_peer: SmtpPeer
) -> AsyncIterator[EmailDesk]:
    desk = EmailDesk(
        core=make_core(sqlite_database, tmp_path),
        dovecot=tls_dovecot,
        user=tls_dovecot.user(),
        smtp=smtp_peer,
    )
    try:
        yield desk
    finally:
        await desk.close()


@pytest.mark.dovecot
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_email_channel_ingests_a_mail_over_tls(
    tls_desk: EmailDesk, tls_dovecot: TlsDovecot, pki: Pki, mode: str
) -> None:
    desk = tls_desk
    if mode == "starttls":
        tls: dict[str, Any] = {"port": tls_dovecot.port, "ssl": False, "starttls": True}
    else:
        tls = {"port": tls_dovecot.imaps_port, "ssl": True, "starttls": False}
    await desk.start(host=SECURE_HOST, ssl_context=pki.client_context(), **tls)
    body = f"The VPN drops every ten minutes since the update ({mode})."
    await desk.deliver(mail("Subject: vpn over tls", body, message_id=f"tls-{mode}"))
    [result] = await desk.wait_results(1, timeout=5)
    assert result.conversation_id is not None and not result.duplicate
    texts = [m.text for m in await desk.messages(result.conversation_id) if m.direction == "in"]
    assert texts == [body]
    # every login of the channel on the address that refuses plaintext went through TLS
    logins = await tls_dovecot.wait_log(f"Login: user=<{desk.user}>", f"lip={SECURE_HOST}")
    assert logins and all(", TLS," in line for line in logins), logins


@pytest.mark.dovecot
async def test_untrusted_certificate_backs_off_and_is_no_crash_loop(
    tls_dovecot: TlsDovecot, caplog: pytest.LogCaptureFixture
) -> None:
    async def handle(inbound: Inbound) -> HandleResult:
        raise AssertionError("nothing can be ingested without a trusted connection")

    channel = EmailChannel(
        desk_address=DESK,
        secret="test-secret-key-not-for-production",
        imap=imap_settings(tls_dovecot.imaps_port, tls_dovecot.user(), ssl=True),
        smtp=SmtpSettings(host="127.0.0.1"),
        handle=handle,
        # backoff between 0.05 and 0.2 s: a handful of attempts in the window below,
        # where a loop without backoff would make hundreds
        policy=IngestPolicy(reconnect_base=0.1, reconnect_max=0.2),
    )
    caplog.set_level(logging.INFO, logger="channels.email")
    await channel.start()
    try:
        await asyncio.sleep(1.0)  # the observation window the attempt count is judged over
        assert not channel.connected.is_set()
        assert 2 <= channel.reconnects <= 15, channel.reconnects
    finally:
        await channel.stop()
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("channels.email")]
    failures = [m for m in messages if m.startswith("email.imap.disconnected")]
    assert len(failures) >= 2
    assert all("ImapConnectionError" in m and NOT_TRUSTED in m for m in failures), failures
    assert not [m for m in messages if "crashed" in m or "session.failed" in m]


# --- SMTP ------------------------------------------------------------------------------


def smtp_settings(port: int, **overrides: Any) -> SmtpSettings:
    values: dict[str, Any] = {"host": "127.0.0.1", "port": port, "timeout": 5.0}
    values.update(overrides)
    return SmtpSettings(**values)


def outbound(outbox_id: int) -> Outbound:
    return Outbound(
        channel="email",
        address={"to": "ann@corp.test", "subject": "vpn", "in_reply_to": "x1@corp.test"},
        markdown="We are on it, over TLS.",
        outbox_id=outbox_id,
        conversation_id=7,
    )


@pytest.fixture
async def starttls_peer(pki: Pki) -> AsyncIterator[TlsSmtpPeer]:
    peer = TlsSmtpPeer(pki, implicit=False)
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop()


@pytest.fixture
async def implicit_peer(pki: Pki) -> AsyncIterator[TlsSmtpPeer]:
    peer = TlsSmtpPeer(pki, implicit=True)
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop()


async def send_one(settings: SmtpSettings) -> None:
    sender = SmtpSender(settings, connections=1)
    try:
        await sender.send(mail("Subject: over tls"), sender=DESK, recipients=["ann@corp.test"])
    finally:
        await sender.close()


async def test_smtp_server_requiring_starttls_refuses_a_plaintext_client(
    starttls_peer: TlsSmtpPeer,
) -> None:
    """The control for the STARTTLS test: the peer does not take mail in plaintext."""
    with pytest.raises(PermanentError, match="530"):
        await send_one(smtp_settings(starttls_peer.port, ssl=False, starttls=False))
    assert starttls_peer.handler.received == []


async def test_smtp_sender_starttls_delivers_encrypted(
    starttls_peer: TlsSmtpPeer, pki: Pki
) -> None:
    settings = smtp_settings(
        starttls_peer.port, ssl=False, starttls=True, ssl_context=pki.client_context()
    )
    await send_one(settings)
    [captured] = starttls_peer.handler.received
    assert captured.mail_from == DESK and captured.rcpt_tos == ["ann@corp.test"]
    [version] = starttls_peer.handler.tls_versions
    assert version in TLS_VERSIONS


async def test_smtp_sender_implicit_tls_delivers_encrypted(
    implicit_peer: TlsSmtpPeer, pki: Pki
) -> None:
    settings = smtp_settings(implicit_peer.port, ssl=True, ssl_context=pki.client_context())
    await send_one(settings)
    assert len(implicit_peer.handler.received) == 1
    [version] = implicit_peer.handler.tls_versions
    assert version in TLS_VERSIONS


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit"])
async def test_email_channel_send_over_tls(pki: Pki, implicit: bool) -> None:
    peer = TlsSmtpPeer(pki, implicit=implicit)
    await peer.start()

    async def handle(inbound: Inbound) -> HandleResult:
        raise AssertionError("this test does not ingest")

    channel = EmailChannel(
        desk_address=DESK,
        secret="test-secret-key-not-for-production",
        imap=ImapSettings(host="127.0.0.1"),
        smtp=smtp_settings(
            peer.port, ssl=implicit, starttls=not implicit, ssl_context=pki.client_context()
        ),
        handle=handle,
    )
    try:
        first = await channel.send(outbound(1))
        second = await channel.send(outbound(2))
    finally:
        await channel.stop()
        await peer.stop()
    received = peer.handler.received
    assert [str(c.message["Message-ID"]).strip("<>") for c in received] == [
        first.platform_id,
        second.platform_id,
    ]
    assert len(peer.handler.tls_versions) == 2
    assert set(peer.handler.tls_versions) <= TLS_VERSIONS


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit"])
async def test_smtp_untrusted_certificate_is_a_transient_error(pki: Pki, implicit: bool) -> None:
    """No ``ssl_context``: aiosmtplib's default, the system's CAs, not the test CA."""
    peer = TlsSmtpPeer(pki, implicit=implicit)
    await peer.start()
    try:
        with pytest.raises(TransientError) as failed:
            await send_one(smtp_settings(peer.port, ssl=implicit, starttls=not implicit))
    finally:
        await peer.stop()
    assert NOT_TRUSTED in str(failed.value), failed.value
    assert peer.handler.received == []


async def test_smtp_starttls_not_offered_fails_and_never_falls_back_to_plaintext(
    smtp_peer: SmtpPeer, pki: Pki
) -> None:
    """The plain aiosmtpd peer has no TLS: with ``starttls=True`` nothing is sent, and the
    error is a configuration error (retrying cannot help), as on IMAP."""
    settings = smtp_settings(
        smtp_peer.port, ssl=False, starttls=True, ssl_context=pki.client_context()
    )
    with pytest.raises(ConfigError, match="STARTTLS"):
        await send_one(settings)
    assert smtp_peer.handler.received == []
    assert smtp_peer.handler.connections == 1
