"""Real peers for the email tests: a Dovecot started from a temp dir, an aiosmtpd capture.

Dovecot follows ../shared/recipes/dovecot.md: its own config file, a free loopback port,
users in a passwd-file (uid ``nobody``), ``dovecot -c CONFIG`` to start and
``doveadm -c CONFIG stop`` to stop. Mail is delivered with IMAP APPEND.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import TypeVar

from aioimaplib import aioimaplib
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session

PASSWORD = "pw-test-mailbox"
USERS = 64
NOBODY = 65534


def dovecot_available() -> bool:
    return shutil.which("dovecot") is not None and shutil.which("doveadm") is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Dovecot:
    """One Dovecot instance; ``user()`` hands out a fresh, empty mailbox per test."""

    root: Path
    port: int = 0
    _next_user: int = 0

    @property
    def config(self) -> Path:
        return self.root / "dovecot.conf"

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # dovecot's auth process (uid dovecot) must traverse to the passwd file
        self.root.chmod(0o755)
        for sub in ("run", "state", "mail"):
            (self.root / sub).mkdir(exist_ok=True)
        os.chown(self.root / "mail", NOBODY, NOBODY)
        passwd = "".join(
            f"u{i}:{{PLAIN}}{PASSWORD}:{NOBODY}:{NOBODY}::{self.root / 'mail'}/u{i}::\n"
            for i in range(USERS)
        )
        (self.root / "passwd").write_text(passwd, encoding="utf-8")
        self.port = self.port or _free_port()
        self.config.write_text(
            f"""
base_dir = {self.root / "run"}
state_dir = {self.root / "state"}
log_path = {self.root / "dovecot.log"}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = 1
mail_location = maildir:{self.root / "mail"}/%u
passdb {{
  driver = passwd-file
  args = {self.root / "passwd"}
}}
userdb {{
  driver = passwd-file
  args = {self.root / "passwd"}
}}
service imap-login {{
  inet_listener imap {{
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""",
            encoding="utf-8",
        )

    def start(self) -> None:
        if not self.config.exists():
            self.write_config()
        subprocess.run(["dovecot", "-c", str(self.config)], check=True, timeout=30)
        deadline = time.monotonic() + 10
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                if sock.recv(64).startswith(b"* OK"):
                    return
            if time.monotonic() > deadline:
                log = (self.root / "dovecot.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"dovecot did not start on port {self.port}: {log}")
            time.sleep(0.05)  # process start-up poll outside any test body

    def stop(self) -> None:
        subprocess.run(
            ["doveadm", "-c", str(self.config), "stop"],
            check=False,
            timeout=30,
            capture_output=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                return
            time.sleep(0.05)

    def kick(self, user: str) -> None:
        """Close every IMAP connection of ``user`` from the server side (R26)."""
        subprocess.run(
            ["doveadm", "-c", str(self.config), "kick", user],
            check=True,
            timeout=30,
            capture_output=True,
        )

    def user(self) -> str:
        name = f"u{self._next_user}"
        self._next_user += 1
        if self._next_user > USERS:
            raise RuntimeError("out of test mailboxes; raise USERS")
        return name


class ImapDriver:
    """The test's own IMAP client: APPEND mail, create/delete folders, list UIDs."""

    def __init__(self, port: int, user: str) -> None:
        self.port = port
        self.user = user
        self.client: aioimaplib.IMAP4 | None = None

    async def __aenter__(self) -> ImapDriver:
        self.client = aioimaplib.IMAP4(host="127.0.0.1", port=self.port, timeout=10)
        await asyncio.wait_for(self.client.wait_hello_from_server(), 10)
        response = await self.client.login(self.user, PASSWORD)
        assert response.result == "OK", response
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.client is not None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.logout(), 5)

    @property
    def imap(self) -> aioimaplib.IMAP4:
        assert self.client is not None
        return self.client

    async def append(self, raw: bytes, folder: str = "INBOX", *, seen: bool = False) -> int:
        """Deliver ``raw``; returns the new UID (from APPENDUID)."""
        response = await self.imap.append(raw, mailbox=folder, flags="(\\Seen)" if seen else None)
        assert response.result == "OK", response
        text = b" ".join(line for line in response.lines if isinstance(line, bytes))
        marker = text.split(b"APPENDUID", 1)[1].split(b"]", 1)[0].split()
        return int(marker[1])

    async def create(self, folder: str) -> None:
        response = await self.imap.create(folder)
        assert response.result == "OK", response

    async def delete(self, folder: str) -> None:
        response = await self.imap.delete(folder)
        assert response.result == "OK", response

    async def uids(self, folder: str) -> list[int]:
        response = await self.imap.status(folder, "(MESSAGES)")
        assert response.result == "OK", response
        response = await self.imap.examine(folder)
        assert response.result == "OK", response
        response = await self.imap.uid_search("ALL", charset=None)
        assert response.result == "OK", response
        first = response.lines[0] if len(response.lines) > 1 else b""
        return [int(x) for x in bytes(first).replace(b"SEARCH", b"").split()]

    async def count(self, folder: str) -> int:
        response = await self.imap.status(folder, "(MESSAGES)")
        if response.result != "OK":
            return 0
        text = b" ".join(line for line in response.lines if isinstance(line, bytes))
        return int(text.split(b"MESSAGES", 1)[1].split(b")", 1)[0])


# --- SMTP ---------------------------------------------------------------------------------


@dataclass
class Captured:
    """One mail the SMTP peer accepted."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class CaptureHandler:
    """aiosmtpd handler: records mail; ``replies`` scripts answers (``"451 try later"``),
    ``drop_after_data`` closes the connection after accepting the DATA of that many mails
    (the R27 ambiguous window)."""

    received: list[Captured] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    drop_after_data: int = 0
    connections: int = 0
    arrived: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None

    async def handle_EHLO(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: SmtpServer,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return responses

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SmtpServer, session: Session, envelope: Envelope
    ) -> str:
        if self.replies:
            return self.replies.pop(0)
        content = envelope.original_content or b""
        self.received.append(
            Captured(
                mail_from=str(envelope.mail_from),
                rcpt_tos=[str(r) for r in envelope.rcpt_tos],
                data=bytes(content),
            )
        )
        if self.arrived is not None and self.loop is not None:
            self.arrived.set()
        if self.drop_after_data:
            self.drop_after_data -= 1
            assert server.transport is not None
            # accept the mail, then cut the line before the client reads "250"
            server.transport.abort()
        return "250 OK queued"


class SmtpPeer:
    """aiosmtpd's SMTP protocol served from the test's own event loop on port 0."""

    def __init__(self) -> None:
        self.handler = CaptureHandler()
        self.server: asyncio.AbstractServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def _protocol(self) -> SmtpServer:
        self.handler.connections += 1
        return SmtpServer(self.handler, hostname="deskbot-test", data_size_limit=64 * 1024 * 1024)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.handler.loop = loop
        self.handler.arrived = asyncio.Event()
        self.server = await loop.create_server(self._protocol, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await asyncio.wait_for(self.server.wait_closed(), 5)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Captured]:
        """Wait (event-driven) until at least ``count`` mails arrived."""
        arrived = self.handler.arrived
        assert arrived is not None, "start the peer first"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.handler.received) < count:
            arrived.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"expected {count} mails, got {len(self.handler.received)}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), remaining)
        return list(self.handler.received)


DovecotT = TypeVar("DovecotT", bound=Dovecot)


@contextlib.contextmanager
def running_dovecot(
    make: Callable[[Path], DovecotT] = Dovecot,  # type: ignore[assignment]
    *,
    prefix: str = "deskbot-dovecot-",
) -> Iterator[DovecotT]:
    """A Dovecot (``make(root)``) in a fresh world-traversable temp dir (pytest's tmp dirs
    are 0700), configured, started, and stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    server = make(root)
    server.write_config()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
