"""Sending mail with aiosmtplib over a pool of reused connections, errors translated (R27, R28).

:class:`SmtpSender` keeps up to ``connections`` SMTP connections open between sends. Each
carries one transaction at a time and goes back to the pool after it; concurrent sends
(the outbox dispatcher runs ``EmailChannel.send_concurrency`` of them) go out in parallel
over different connections, and a pool that is never used concurrently holds one. A
connection is opened only when no idle one is left, so the pool never holds more than
``connections``.

The transaction is driven step by step (MAIL, RCPT, DATA) so a failure can be placed:

- before DATA nothing was handed over; a stale reused connection (the server timed it
  out) is dropped and the mail retried once at once over a new one;
- during or after DATA the server may have accepted the mail (the "." ambiguity): the
  connection is dropped and the error goes back to the outbox as transient, and the resend
  carries the same Message-ID (minted from the outbox id), so the recipient's client and
  our own ingest keep one copy.

4xx replies are :class:`TransientError` (421/451 as :class:`RateLimited`), 5xx are
:class:`PermanentError`, connection errors and timeouts are transient. A connection that
answered 421 or failed is closed; after a refused MAIL or RCPT it is RSET and reused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from ssl import SSLContext

import aiosmtplib

from bot.errors import ConfigError, PermanentError, RateLimited, TransientError

logger = logging.getLogger(__name__)

_RATE_CODES = frozenset({421, 451})


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """The desk's outgoing mail server."""

    host: str
    port: int = 587
    user: str | None = None
    password: str | None = None
    ssl: bool = False
    starttls: bool = True
    timeout: float = 30.0
    rate_limit_seconds: float = 60.0
    ssl_context: SSLContext | None = None


def translate(exc: BaseException, what: str, *, rate_limit_seconds: float = 60.0) -> Exception:
    """An aiosmtplib (or socket) failure as one of the core's errors."""
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return ConfigError(f"SMTP authentication refused: {exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        code = exc.code
        text = f"{what}: {code} {exc.message}"[:500]
        if code in _RATE_CODES:
            return RateLimited(text, retry_after=rate_limit_seconds)
        if 400 <= code < 500:
            return TransientError(text)
        if 500 <= code < 600:
            return PermanentError(text)
        return TransientError(text)
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        if codes and all(500 <= c < 600 for c in codes):
            return PermanentError(f"{what}: recipients refused {codes}")
        return TransientError(f"{what}: recipients refused {codes}")
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return ConfigError(f"{what}: {exc}")
    if isinstance(exc, aiosmtplib.SMTPException) and "STARTTLS extension not supported" in str(exc):
        # aiosmtplib raises a bare SMTPException here (its extension list is already
        # cleared): a retry cannot help, and plaintext is never the fallback
        return ConfigError(f"{what}: smtp_starttls is set but the server does not offer STARTTLS")
    return TransientError(f"{what}: {type(exc).__name__}: {exc}"[:500])


class SmtpSender:
    """Up to ``connections`` aiosmtplib clients, each reused from mail to mail."""

    def __init__(self, settings: SmtpSettings, *, connections: int = 4) -> None:
        if connections < 1:
            raise ValueError("an SMTP pool needs at least one connection")
        self.settings = settings
        self.size = connections
        self._slots = asyncio.Semaphore(connections)
        self._idle: list[aiosmtplib.SMTP] = []  # connected, no transaction; last in, first out
        self.connections = 0  # connections opened so far (tests, benchmarks)

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            username=s.user or None,
            password=s.password or None,
            use_tls=s.ssl,
            start_tls=bool(s.starttls) if not s.ssl else False,
            timeout=s.timeout,
            tls_context=s.ssl_context,
        )
        try:
            await asyncio.wait_for(client.connect(), timeout=s.timeout + 5)
        except BaseException as exc:
            client.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise translate(exc, "connect") from exc
        self.connections += 1
        return client

    def _take_idle(self) -> aiosmtplib.SMTP | None:
        """The most recently used idle connection still open (the warmest), if any."""
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client
            client.close()
        return None

    async def send(self, data: bytes, *, sender: str, recipients: Sequence[str]) -> None:
        """Hand ``data`` (a rendered mail) to the server for ``recipients`` from ``sender``."""
        timeout = self.settings.timeout
        async with self._slots:
            client = self._take_idle()
            for attempt in (1, 2):
                reused = client is not None
                if client is None:
                    client = await self._connect()
                stage = "MAIL FROM"
                try:
                    # aiosmtplib bounds each command by its own ``timeout``
                    await client.mail(sender, timeout=timeout)
                    stage = "RCPT TO"
                    for recipient in recipients:
                        await client.rcpt(recipient, timeout=timeout)
                    stage = "DATA"
                    await client.data(data, timeout=timeout * 2)
                except asyncio.CancelledError:
                    client.close()
                    raise
                except aiosmtplib.SMTPResponseException as exc:
                    if exc.code != 421 and stage != "DATA" and await self._reset(client):
                        self._idle.append(client)
                    else:
                        client.close()
                    raise translate(
                        exc, stage, rate_limit_seconds=self.settings.rate_limit_seconds
                    ) from exc
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    client.close()
                    if reused and stage != "DATA" and attempt == 1:
                        # the server closed an idle connection: nothing was handed over yet
                        logger.info("email.smtp.stale_connection stage=%s", stage)
                        client = None
                        continue
                    raise translate(exc, stage) from exc
                self._idle.append(client)
                return

    async def _reset(self, client: aiosmtplib.SMTP) -> bool:
        """RSET after a refused MAIL/RCPT so the connection can carry the next mail."""
        try:
            await client.rset(timeout=self.settings.timeout)
        except asyncio.CancelledError:
            client.close()
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            return False
        return True

    async def close(self) -> None:
        """QUIT every connection once the sends in flight are done."""
        held = 0
        try:
            for _ in range(self.size):
                await self._slots.acquire()
                held += 1
            idle, self._idle = self._idle, []
            await asyncio.gather(*(self._quit(client) for client in idle))
        finally:
            for _ in range(held):
                self._slots.release()

    async def _quit(self, client: aiosmtplib.SMTP) -> None:
        try:
            if client.is_connected:
                await asyncio.wait_for(client.quit(), timeout=5)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            logger.debug("email.smtp.quit.failed error=%s", type(exc).__name__)
        finally:
            client.close()
