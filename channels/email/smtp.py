"""Sending mail with aiosmtplib over one reused connection, errors translated (R27, R28).

The transaction is driven step by step (MAIL, RCPT, DATA) so a failure can be placed:

- before DATA nothing was handed over; a stale reused connection (the server timed it
  out) is replaced and the mail retried once at once;
- during or after DATA the server may have accepted the mail (the "." ambiguity): the
  error goes back to the outbox as transient, and the resend carries the same Message-ID
  (minted from the outbox id), so the recipient's client and our own ingest keep one copy.

4xx replies are :class:`TransientError` (421/451 as :class:`RateLimited`), 5xx are
:class:`PermanentError`, connection errors and timeouts are transient.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from email.generator import BytesGenerator
from email.message import EmailMessage
from io import BytesIO
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


def message_bytes(message: EmailMessage) -> bytes:
    """The message as it goes on the wire (CRLF line ends)."""
    buffer = BytesIO()
    BytesGenerator(buffer, policy=message.policy.clone(linesep="\r\n")).flatten(message)
    return buffer.getvalue()


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
    return TransientError(f"{what}: {type(exc).__name__}: {exc}"[:500])


class SmtpSender:
    """One aiosmtplib client kept open between sends; a lock keeps transactions apart."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._client: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()
        self.connections = 0

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

    async def _reuse_or_connect(self) -> tuple[aiosmtplib.SMTP, bool]:
        if self._client is not None and self._client.is_connected:
            return self._client, True
        self._drop()
        self._client = await self._connect()
        return self._client, False

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def send(self, message: EmailMessage, *, sender: str, recipients: list[str]) -> None:
        """Hand ``message`` to the server for ``recipients`` with envelope ``sender``."""
        data = message_bytes(message)
        timeout = self.settings.timeout
        async with self._lock:
            for attempt in (1, 2):
                client, reused = await self._reuse_or_connect()
                stage = "MAIL FROM"
                try:
                    # aiosmtplib bounds each command by its own ``timeout``
                    await client.mail(sender, timeout=timeout)
                    stage = "RCPT TO"
                    for recipient in recipients:
                        await client.rcpt(recipient, timeout=timeout)
                    stage = "DATA"
                    await client.data(data, timeout=timeout * 2)
                    return
                except asyncio.CancelledError:
                    self._drop()
                    raise
                except aiosmtplib.SMTPResponseException as exc:
                    if exc.code == 421 or stage == "DATA":
                        self._drop()
                    else:
                        await self._reset(client)
                    raise translate(
                        exc, stage, rate_limit_seconds=self.settings.rate_limit_seconds
                    ) from exc
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    self._drop()
                    if reused and stage != "DATA" and attempt == 1:
                        # the server closed an idle connection: nothing was handed over yet
                        logger.info("email.smtp.stale_connection stage=%s", stage)
                        continue
                    raise translate(exc, stage) from exc

    async def _reset(self, client: aiosmtplib.SMTP) -> None:
        """RSET after a refused MAIL/RCPT so the connection can carry the next mail."""
        try:
            await asyncio.wait_for(client.rset(), self.settings.timeout)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self._drop()

    async def close(self) -> None:
        async with self._lock:
            client, self._client = self._client, None
            if client is None:
                return
            try:
                if client.is_connected:
                    await asyncio.wait_for(client.quit(), timeout=5)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                logger.debug("email.smtp.quit.failed error=%s", type(exc).__name__)
            finally:
                client.close()
