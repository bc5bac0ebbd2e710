"""TLS peers for the email tests: a throw-away CA, Dovecot with STARTTLS and imaps, and
aiosmtpd with STARTTLS or implicit TLS.

The CA and the server certificate (for 127.0.0.1, 127.0.0.2 and localhost) are made by
``trustme`` at test time; nothing is committed and nothing is trusted outside the tests.

Dovecot counts a connection whose remote address equals its local address as secure, so
on 127.0.0.1 -> 127.0.0.1 it would allow a plaintext LOGIN even with
``disable_plaintext_auth = yes``. The TLS Dovecot therefore also listens on
:data:`SECURE_HOST` (127.0.0.2): Linux answers the whole of 127/8 on loopback and picks
127.0.0.1 as the source address, so there remote != local and Dovecot refuses any login
that did not go through TLS (``LOGINDISABLED``, ``NO [PRIVACYREQUIRED]``). Tests that must
prove TLS connect there; the test's own :class:`~tests.channels.email.peers.ImapDriver`
(APPEND and friends, plaintext) keeps using 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trustme
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session

from tests.channels.email.peers import (
    CaptureHandler,
    Dovecot,
    SmtpPeer,
    _free_port,
    running_dovecot,
)

SECURE_HOST = "127.0.0.2"
SERVER_NAMES = ("127.0.0.1", SECURE_HOST, "localhost")


@dataclass(frozen=True)
class Pki:
    """A test CA and one server certificate it issued for :data:`SERVER_NAMES`."""

    ca: trustme.CA
    server: trustme.LeafCert

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context (hostname checked) that trusts only the test CA."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
        self.ca.configure_trust(context)
        return context

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(context)
        return context

    def write_server_pem(self, path: Path) -> Path:
        """Key and certificate chain in one PEM file, readable by root only."""
        self.server.private_key_and_cert_chain_pem.write_to_path(str(path))
        path.chmod(0o600)
        return path


def make_pki() -> Pki:
    ca = trustme.CA(organization_name="deskbot test CA")
    return Pki(ca=ca, server=ca.issue_cert(*SERVER_NAMES))


@dataclass
class TlsDovecot(Dovecot):
    """:class:`Dovecot` plus ``ssl = yes`` (STARTTLS on ``port``), an ``imaps`` listener on
    ``imaps_port`` and ``disable_plaintext_auth = yes``, on 127.0.0.1 and :data:`SECURE_HOST`.

    The plain peer's config is kept as ``plain.conf`` and included first; the settings
    after the include override it (Dovecot merges the ``service imap-login`` block).
    Debian's Dovecot 2.3 needs neither ``ssl_dh`` (OpenSSL 3 uses ECDHE/TLS 1.3 groups)
    nor ``ssl_min_protocol`` (its default, TLSv1.2, is what Python's client accepts):
    the log shows a clean start with just the lines below.
    """

    pki: Pki | None = None
    imaps_port: int = 0

    @property
    def log(self) -> Path:
        return self.root / "dovecot.log"

    def write_config(self) -> None:
        assert self.pki is not None, "TlsDovecot needs a pki"
        super().write_config()
        base = self.root / "plain.conf"
        self.config.replace(base)
        pem = self.pki.write_server_pem(self.root / "server.pem")
        self.imaps_port = self.imaps_port or _free_port()
        self.config.write_text(
            f"""!include {base}
listen = 127.0.0.1, {SECURE_HOST}
ssl = yes
ssl_cert = <{pem}
ssl_key = <{pem}
disable_plaintext_auth = yes
service imap-login {{
  inet_listener imaps {{
    port = {self.imaps_port}
  }}
}}
""",
            encoding="utf-8",
        )

    def log_problems(self) -> list[str]:
        """Lines of Dovecot's log that say something went wrong (config, TLS setup)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [
            line
            for line in text.splitlines()
            if any(word in line for word in ("Warning:", "Error:", "Fatal:", "Panic:"))
        ]

    async def wait_log(self, *needles: str, timeout: float = 5.0) -> list[str]:
        """The log lines containing every one of ``needles``, once at least one is there.

        Dovecot's log process writes asynchronously and gives no signal, so this polls
        the file (bounded); callers only wait for lines of an event that already happened.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            found = [line for line in text.splitlines() if all(n in line for n in needles)]
            if found or loop.time() > deadline:
                return found
            await asyncio.sleep(0.05)


@contextlib.contextmanager
def running_tls_dovecot(pki: Pki) -> Iterator[TlsDovecot]:
    """A TLS Dovecot in a fresh world-traversable temp dir (as ``running_dovecot``)."""
    with running_dovecot(
        lambda root: TlsDovecot(root, pki=pki), prefix="deskbot-dovecot-tls-"
    ) as server:
        yield server


# --- SMTP ---------------------------------------------------------------------------------


@dataclass
class TlsCaptureHandler(CaptureHandler):
    """:class:`CaptureHandler` that also notes, per accepted mail, the TLS version of the
    connection it came over (``None`` for plaintext), as the server saw it."""

    tls_versions: list[str | None] = field(default_factory=list)

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SmtpServer, session: Session, envelope: Envelope
    ) -> str:
        assert server.transport is not None
        ssl_object = server.transport.get_extra_info("ssl_object")
        version = ssl_object.version() if ssl_object is not None else None
        answer = await super().handle_DATA(server, session, envelope)
        if answer.startswith("250"):
            self.tls_versions.append(version)
        return answer


class TlsSmtpPeer(SmtpPeer):
    """aiosmtpd with TLS: ``implicit=False`` offers STARTTLS and refuses MAIL before it
    (``require_starttls=True``, "530 Must issue a STARTTLS command first");
    ``implicit=True`` speaks TLS from the first byte (port-465 style)."""

    def __init__(self, pki: Pki, *, implicit: bool) -> None:
        super().__init__()
        self.handler: TlsCaptureHandler = TlsCaptureHandler()
        self.implicit = implicit
        self.context = pki.server_context()

    def _protocol(self) -> SmtpServer:
        self.handler.connections += 1
        if self.implicit:
            return SmtpServer(self.handler, hostname="deskbot-test")
        return SmtpServer(
            self.handler,
            hostname="deskbot-test",
            tls_context=self.context,
            require_starttls=True,
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.handler.loop = loop
        self.handler.arrived = asyncio.Event()
        self.server = await loop.create_server(
            self._protocol, "127.0.0.1", 0, ssl=self.context if self.implicit else None
        )
