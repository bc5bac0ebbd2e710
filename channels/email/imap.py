"""One IMAP connection, with every await bounded and aioimaplib's failures translated.

aioimaplib leaves a command waiting forever when the server goes away (it only calls a
"connection lost" callback), and its ``idle_start`` can hang (RELIABILITY.md). So each
command here races the reply against a timeout *and* the connection-lost signal; either
one raises :class:`ImapConnectionError`, which the poller answers by reconnecting.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any, TypeVar

from aioimaplib import aioimaplib

from bot.errors import ConfigError, TransientError

logger = logging.getLogger(__name__)

T = TypeVar("T")

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_FETCH_START = re.compile(rb"^\d+ FETCH \(")
_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")


@dataclass(frozen=True, slots=True)
class ImapSettings:
    """Where the desk's mailbox is and how the poller treats it."""

    host: str
    port: int = 993
    user: str = ""
    password: str = ""
    ssl: bool = True
    starttls: bool = False
    folder: str = "INBOX"
    processed_folder: str | None = "Processed"
    failed_folder: str | None = "Failed"
    poll_seconds: float = 30.0
    idle_renew_seconds: float = 300.0
    command_timeout: float = 30.0
    connect_timeout: float = 15.0
    ssl_context: SSLContext | None = None


class ImapConnectionError(TransientError):
    """The connection broke, timed out or said something we cannot go on from."""


class ImapCommandError(TransientError):
    """The server answered NO/BAD to a command (the connection itself is still usable)."""


@dataclass(frozen=True, slots=True)
class FetchedMail:
    """One message's raw bytes as fetched by ``UID FETCH … BODY.PEEK[]``."""

    uid: int
    raw: bytes


def _text(lines: list[Any]) -> bytes:
    return b" ".join(bytes(line) for line in lines if isinstance(line, bytes | bytearray))


def _quote(mailbox: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9._/\-]+", mailbox):
        return mailbox
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def uid_set(uids: list[int]) -> str:
    """``1:3,7`` from ``[1, 2, 3, 7]`` (sorted, ranges collapsed)."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(f"{start}:{prev}" if start != prev else str(start))
        start = prev = uid
    parts.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(parts)


def parse_sizes(lines: list[Any]) -> dict[int, int]:
    """``{uid: RFC822.SIZE}`` from a ``UID FETCH … (UID RFC822.SIZE)`` response."""
    sizes: dict[int, int] = {}
    for line in lines:
        if not isinstance(line, bytes) or not _FETCH_START.match(line):
            continue
        uid, size = _UID.search(line), _SIZE.search(line)
        if uid and size:
            sizes[int(uid.group(1))] = int(size.group(1))
    return sizes


def parse_bodies(lines: list[Any]) -> list[FetchedMail]:
    """The literal of each ``n FETCH (UID u BODY[] {len}`` item, with its UID.

    The UID may come before or after the literal, so each FETCH item is collected up to
    the next one before it is read.
    """
    found: list[FetchedMail] = []
    uid: int | None = None
    raw: bytes | None = None

    def flush() -> None:
        if uid is not None and raw is not None:
            found.append(FetchedMail(uid=uid, raw=raw))

    for line in lines:
        if isinstance(line, bytearray):
            raw = bytes(line)
            continue
        if not isinstance(line, bytes):
            continue
        if _FETCH_START.match(line):
            flush()
            uid, raw = None, None
        match = _UID.search(line)
        if match:
            uid = int(match.group(1))
    flush()
    return found


class ImapConnection:
    """A logged-in IMAP session on one mailbox; every call is bounded in time."""

    def __init__(self, settings: ImapSettings) -> None:
        self.settings = settings
        self._client: aioimaplib.IMAP4 | None = None
        self._lost = asyncio.Event()
        self.uidvalidity: int | None = None
        self.selected: str | None = None

    # plumbing --------------------------------------------------------------------

    @property
    def client(self) -> aioimaplib.IMAP4:
        if self._client is None:
            raise ImapConnectionError("not connected")
        return self._client

    def _on_lost(self, exc: Exception | None) -> None:
        logger.info("email.imap.connection_lost error=%s", type(exc).__name__ if exc else None)
        self._lost.set()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    async def _bounded(self, awaitable: Awaitable[T], what: str, timeout: float | None = None) -> T:
        """``awaitable`` unless the connection drops or ``timeout`` passes first."""
        if self._lost.is_set():
            raise ImapConnectionError(f"connection lost before {what}")
        task = asyncio.ensure_future(awaitable)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait(
                {task, lost},
                timeout=timeout or self.settings.command_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
        if task in done:
            try:
                return task.result()
            except (aioimaplib.AioImapException, OSError, TimeoutError) as exc:
                raise ImapConnectionError(f"{what} failed: {type(exc).__name__}: {exc}") from exc
        if lost in done:
            raise ImapConnectionError(f"connection lost during {what}")
        raise ImapConnectionError(f"{what} timed out")

    async def _ok(self, awaitable: Awaitable[Any], what: str, timeout: float | None = None) -> Any:
        response = await self._bounded(awaitable, what, timeout)
        if response.result != "OK":
            raise ImapCommandError(f"{what}: {response.result} {_text(response.lines)[:300]!r}")
        return response

    # session -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, optionally STARTTLS, log in. Bad credentials raise :class:`ConfigError`."""
        s = self.settings
        timeout = s.command_timeout
        if s.ssl:
            context = s.ssl_context or ssl.create_default_context()
            client: aioimaplib.IMAP4 = aioimaplib.IMAP4_SSL(
                host=s.host, port=s.port, timeout=timeout, ssl_context=context
            )
        else:
            client = aioimaplib.IMAP4(host=s.host, port=s.port, timeout=timeout)
        # IMAP4_SSL does not pass the callback on; the protocol reads it only on loss
        client.protocol.conn_lost_cb = self._on_lost
        self._client = client
        await self._bounded(client.wait_hello_from_server(), "greeting", s.connect_timeout)
        if s.starttls and not s.ssl:
            await self._starttls()
        if "LOGINDISABLED" in client.protocol.capabilities:
            # RFC 3501 6.2.3: the client must not send LOGIN then; doing so would put the
            # password on the wire in the clear only to be refused
            raise ConfigError(
                "the IMAP server refuses login without TLS (LOGINDISABLED): "
                "set imap_ssl or imap_starttls"
            )
        response = await self._bounded(client.login(s.user, s.password), "login")
        if response.result != "OK":
            raise ConfigError(f"IMAP login refused for {s.user!r}: {_text(response.lines)[:200]!r}")

    async def _starttls(self) -> None:
        protocol = self.client.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise ConfigError("imap_starttls is set but the server does not offer STARTTLS")
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        await self._ok(protocol.execute(command), "STARTTLS")
        loop = asyncio.get_running_loop()
        context = self.settings.ssl_context or ssl.create_default_context()
        transport = await self._bounded(
            loop.start_tls(
                protocol.transport, protocol, context, server_hostname=self.settings.host
            ),
            "TLS handshake",
        )
        protocol.transport = transport
        await self._bounded(protocol.capability(), "CAPABILITY")

    def has(self, capability: str) -> bool:
        return self._client is not None and self._client.has_capability(capability)

    async def select(self, mailbox: str) -> int:
        """SELECT ``mailbox``; returns its UIDVALIDITY."""
        response = await self._ok(self.client.select(_quote(mailbox)), f"SELECT {mailbox}")
        match = _UIDVALIDITY.search(_text(response.lines))
        if match is None:
            raise ImapConnectionError(f"SELECT {mailbox} gave no UIDVALIDITY")
        self.uidvalidity = int(match.group(1))
        self.selected = mailbox
        return self.uidvalidity

    async def ensure_folder(self, mailbox: str) -> None:
        response = await self._bounded(self.client.create(_quote(mailbox)), f"CREATE {mailbox}")
        if response.result != "OK" and b"ALREADYEXISTS" not in _text(response.lines).upper():
            # some servers say only "NO Mailbox exists": check that it is really there
            status = await self._bounded(
                self.client.status(_quote(mailbox), "(UIDVALIDITY)"), f"STATUS {mailbox}"
            )
            if status.result != "OK":
                raise ConfigError(f"cannot create IMAP folder {mailbox!r}")

    async def sizes_above(self, last_uid: int) -> dict[int, int]:
        """``{uid: size}`` of messages with a UID above ``last_uid``.

        ``UID FETCH n:*`` always returns the highest message even when its UID is below
        ``n`` (RFC 3501 §6.4.8, R22), so anything not above ``last_uid`` is dropped here.
        """
        response = await self._ok(
            self.client.uid("fetch", f"{last_uid + 1}:*", "(UID RFC822.SIZE)"), "UID FETCH sizes"
        )
        return {uid: size for uid, size in parse_sizes(response.lines).items() if uid > last_uid}

    async def sizes_of(self, uids: list[int]) -> dict[int, int]:
        response = await self._ok(
            self.client.uid("fetch", uid_set(uids), "(UID RFC822.SIZE)"), "UID FETCH sizes"
        )
        return parse_sizes(response.lines)

    async def fetch(self, uids: list[int]) -> list[FetchedMail]:
        """Raw messages by UID; ``BODY.PEEK[]`` leaves ``\\Seen`` alone."""
        response = await self._ok(
            self.client.uid("fetch", uid_set(uids), "(UID BODY.PEEK[])"), "UID FETCH bodies"
        )
        return parse_bodies(response.lines)

    async def move(self, uids: list[int], mailbox: str) -> None:
        """MOVE when offered, else COPY + \\Deleted + (UID) EXPUNGE."""
        if not uids:
            return
        target = _quote(mailbox)
        which = uid_set(uids)
        if self.has("MOVE"):
            await self._ok(self.client.uid("move", which, target), f"UID MOVE to {mailbox}")
            return
        await self._ok(self.client.uid("copy", which, target), f"UID COPY to {mailbox}")
        await self._ok(
            self.client.uid("store", which, "+FLAGS.SILENT", "(\\Deleted)"), "UID STORE \\Deleted"
        )
        if self.has("UIDPLUS"):
            await self._ok(self.client.uid("expunge", which), "UID EXPUNGE")
        else:
            await self._ok(self.client.expunge(), "EXPUNGE")

    async def idle(self, *, renew: float, wake: asyncio.Event) -> bool:
        """Wait in IDLE up to ``renew`` seconds; True when the server reported new mail.

        Returns early (False) when ``wake`` is set. Ending IDLE (DONE and the tagged
        answer) is bounded too, so a half-open connection is noticed within
        ``renew + command_timeout`` at worst.
        """
        client = self.client
        idle = await self._bounded(client.idle_start(timeout=renew), "IDLE start")
        news = False
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + renew
            while not news and not wake.is_set():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                push = asyncio.ensure_future(client.wait_server_push(timeout=remaining + 1))
                woken = asyncio.ensure_future(wake.wait())
                lost = asyncio.ensure_future(self._lost.wait())
                try:
                    done, _ = await asyncio.wait(
                        {push, woken, lost}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for task in (push, woken, lost):
                        if not task.done():
                            task.cancel()
                if lost in done:
                    raise ImapConnectionError("connection lost in IDLE")
                # a push may complete in the instant between the wait and the cancel:
                # look at any finished push, not only one the wait reported
                if push.done() and not push.cancelled():
                    try:
                        lines = push.result()
                    except TimeoutError:
                        break
                    if lines == aioimaplib.STOP_WAIT_SERVER_PUSH:
                        break
                    if any(
                        isinstance(line, bytes) and (b"EXISTS" in line or b"RECENT" in line)
                        for line in lines
                    ):
                        news = True
        finally:
            if client.has_pending_idle() and not self._lost.is_set():
                client.idle_done()
            if not idle.done():
                try:
                    await self._bounded(asyncio.shield(idle), "IDLE done")
                finally:
                    if not idle.done():
                        idle.cancel()
        return news

    async def logout(self) -> None:
        """Best effort, bounded; then the transport is closed whatever happened."""
        client = self._client
        self._client = None
        if client is None:
            return
        try:
            if not self._lost.is_set():
                await asyncio.wait_for(
                    client.logout(), timeout=min(5.0, self.settings.command_timeout)
                )
        except (aioimaplib.AioImapException, OSError, TimeoutError, asyncio.CancelledError) as exc:
            logger.debug("email.imap.logout.failed error=%s", type(exc).__name__)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            transport = client.protocol.transport
            if transport is not None:
                transport.close()
            for task in list(client.tasks) + list(client.protocol.tasks):
                task.cancel()
