"""The live email channel: an IMAP poller that feeds the core, an SMTP sender for the outbox.

Ingest (R21–R26, R32)
    LOGIN, SELECT (read UIDVALIDITY), ``UID FETCH last+1:* (UID RFC822.SIZE)`` (the highest
    message comes back even when it is not above ``last``; it is filtered out, R22), then
    ``BODY.PEEK[]`` in batches (``\\Seen`` is neither read nor set, R24). Each message
    becomes one :class:`Inbound` with ``external_id = imap:<mailbox>:<uidvalidity>:<uid>``
    and goes to the core, which records the receipt in the same transaction as everything
    else. Only after the core returned (new or duplicate) is the message moved to the
    processed folder: a crash in between re-fetches it and the receipt drops it (R25). A
    new UIDVALIDITY re-scans the whole folder; the core's alternative ids (Message-ID,
    content hash) drop what it had already seen (R23). A message that fails to parse or
    to be handled ``max_attempts`` times goes to the failed folder with the reason logged,
    and the poller carries on (R32). IDLE is used when offered (renewed every
    ``idle_renew_seconds``), polling otherwise; any connection failure reconnects with
    exponential backoff and jitter (R26). With ``mailbox_lock`` (``deskbot run`` passes the
    core's ``exclusive``) the poller runs only while this node holds the mailbox's lock:
    another node waits, and takes over when the holder stops or its lock connection dies;
    a node that loses the lock stops polling at once and waits again.

Send (R18, R27, R28)
    :func:`convert.render_outbound` renders the outbox row to wire bytes with a Message-ID
    minted from the outbox id, so a resend reuses it; the envelope sender is the desk
    address; see :mod:`channels.email.smtp` for the connection pool and the error mapping.
    ``send_concurrency`` (the pool size) tells the outbox dispatcher how many sends it may
    keep in flight.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from bot.errors import ConfigError, PermanentError, TransientError
from channels.base import Delivery, Inbound, InboundHandler, Outbound
from channels.email.classify import classify
from channels.email.convert import inbound_from_mail, render_outbound
from channels.email.imap import FetchedMail, ImapConnection, ImapConnectionError, ImapSettings
from channels.email.parse import DEFAULT_LIMITS, ParseLimits, parse_mail
from channels.email.smtp import SmtpSender, SmtpSettings

logger = logging.getLogger(__name__)

_INLINE_PARSE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class IngestPolicy:
    """How the poller retries, batches and backs off."""

    max_attempts: int = 3
    retry_seconds: float = 30.0
    batch_messages: int = 100
    batch_bytes: int = 16 * 1024 * 1024
    reconnect_base: float = 1.0
    reconnect_max: float = 300.0


class _Systemic(Exception):
    """The core could not take a message for reasons not the message's own (database down)."""


class EmailChannel:
    """Channel ``email``: IMAP in, SMTP out. Implements the Channel protocol."""

    kind = "email"

    def __init__(
        self,
        *,
        desk_address: str,
        secret: str,
        imap: ImapSettings,
        smtp: SmtpSettings,
        handle: InboundHandler,
        desk_name: str | None = "IT Service Desk",
        policy: IngestPolicy | None = None,
        parse_limits: ParseLimits = DEFAULT_LIMITS,
        rng: random.Random | None = None,
        clock: Callable[[], float] | None = None,
        claim_archive: Callable[[str, Sequence[str]], Awaitable[set[str]]] | None = None,
        mailbox_lock: Callable[[str], AbstractAsyncContextManager[asyncio.Event]] | None = None,
        smtp_connections: int = 4,
    ) -> None:
        self.desk_address = desk_address
        self.secret = secret
        self.imap = imap
        self.smtp = SmtpSender(smtp, connections=smtp_connections)
        # the outbox dispatcher keeps this many sends in flight (a conversation's in order)
        self.send_concurrency = self.smtp.size
        self.handle = handle
        # asks the core who moves the handled mails of a batch (by their external ids, in
        # one transaction), so two pollers archive each mail once
        self.claim_archive = claim_archive
        # held while polling, so that one node at a time works the mailbox (the event
        # it yields is set when the hold is lost); None: poll without asking
        self.mailbox_lock = mailbox_lock
        self.desk_name = desk_name
        self.policy = policy or IngestPolicy()
        self.parse_limits = parse_limits
        self._rng = rng or random.Random()
        self._now = clock or (lambda: asyncio.get_running_loop().time())
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # poller state, in memory: the database holds the receipts that make it safe
        self.uidvalidity: int | None = None
        self.last_uid = 0
        self._failures: dict[tuple[int, int], int] = {}
        self._retry_at: dict[int, float] = {}
        self._given_up: set[int] = set()
        # observable progress (tests, health)
        self.holding = asyncio.Event()  # this node holds the mailbox (or needs no lock)
        self.connected = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.disconnected.set()
        self.idling = asyncio.Event()
        self.scans = 0
        self.reconnects = 0
        self.quarantined: list[tuple[int, str]] = []
        self._scanned = asyncio.Condition()

    # lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="email.imap.poller")
            self._task.add_done_callback(self._crashed)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                logger.debug("email.imap.poller.stopped")
        await self.smtp.close()

    def _crashed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("email.imap.poller.crashed", exc_info=task.exception())

    def poll_now(self) -> None:
        """Scan at once instead of at the next poll or IDLE notification."""
        self._wake.set()

    async def wait_scans(self, count: int, *, timeout: float = 10.0) -> None:
        """Wait until ``count`` scans have completed since the channel was made."""
        async with self._scanned:
            await asyncio.wait_for(self._scanned.wait_for(lambda: self.scans >= count), timeout)

    # send ----------------------------------------------------------------------------

    async def send(self, outbound: Outbound) -> Delivery:
        """Send one outbox row; ``platform_id`` is our Message-ID without brackets."""
        try:
            mail = render_outbound(
                outbound,
                desk_address=self.desk_address,
                secret=self.secret,
                desk_name=self.desk_name,
            )
        except ValueError as exc:
            raise PermanentError(f"cannot render mail: {exc}") from exc
        await self.smtp.send(mail.data, sender=self.desk_address, recipients=mail.recipients)
        logger.info(
            "email.outbound.sent outbox_id=%s message_id=%s", outbound.outbox_id, mail.message_id
        )
        return Delivery(platform_id=mail.message_id, meta={"to": list(mail.recipients)})

    async def reconcile(self, outbound: Outbound) -> Delivery | None:
        """Always "resend": the same outbox row gives the same Message-ID (R27).

        SMTP cannot tell whether a mail interrupted after "." was delivered, but a resend
        carries the Message-ID of the first try, so mail clients and our own ingest keep
        one copy. That makes a resend the safe choice, not an ambiguity for an agent.
        """
        return None

    # ingest --------------------------------------------------------------------------

    @property
    def mailbox_name(self) -> str:
        """What the mailbox lock is named after: one mailbox folder on one server."""
        return f"email.mailbox:{self.imap.user}@{self.imap.host.lower()}/{self.imap.folder}"

    async def _run(self) -> None:
        if self.mailbox_lock is None:
            self.holding.set()
            await self._poll()
            return
        failures = 0
        while True:
            try:
                logger.info("email.imap.mailbox.wanted mailbox=%s", self.mailbox_name)
                async with self.mailbox_lock(self.mailbox_name) as lost:
                    failures = 0
                    self.holding.set()
                    logger.info("email.imap.mailbox.held mailbox=%s", self.mailbox_name)
                    async with asyncio.TaskGroup() as group:
                        poller = group.create_task(self._poll(), name="email.imap.session")
                        await lost.wait()
                        poller.cancel()
                    logger.warning(
                        "email.imap.mailbox.lost mailbox=%s: polling stopped, waiting again",
                        self.mailbox_name,
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # the database cannot be asked (down, or the lock connection failed)
                logger.warning(
                    "email.imap.mailbox.lock_failed mailbox=%s error=%s: %s",
                    self.mailbox_name,
                    type(exc).__name__,
                    exc,
                )
                failures += 1
            finally:
                self.holding.clear()
            if failures:
                await asyncio.sleep(self._backoff(failures - 1))

    async def _poll(self) -> None:
        """Connect, scan and wait (IDLE or poll) until cancelled; reconnect with backoff."""
        failures = 0
        while True:
            connection = ImapConnection(self.imap)
            scans_before = self.scans
            try:
                await connection.connect()
                await self._prepare(connection)
                self.disconnected.clear()
                self.connected.set()
                await self._serve(connection)
            except asyncio.CancelledError:
                raise
            except ConfigError as exc:
                logger.error("email.imap.config_error error=%s", exc)
            except (ImapConnectionError, _Systemic, TransientError, OSError, TimeoutError) as exc:
                logger.warning("email.imap.disconnected error=%s: %s", type(exc).__name__, exc)
            except Exception:
                logger.exception("email.imap.session.failed")
            finally:
                self.connected.clear()
                self.disconnected.set()
                self.idling.clear()
                await connection.logout()
            if self.scans > scans_before:  # the session worked for a while: start afresh
                failures = 0
            delay = self._backoff(failures)
            failures += 1
            self.reconnects += 1
            logger.info("email.imap.reconnect delay=%.2f attempt=%d", delay, failures)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                logger.debug("email.imap.reconnect.due")
            self._wake.clear()

    def _backoff(self, failures: int) -> float:
        ceiling = min(self.policy.reconnect_max, self.policy.reconnect_base * (2**failures))
        return self._rng.uniform(ceiling / 2, ceiling)

    async def _prepare(self, connection: ImapConnection) -> None:
        for folder in (self.imap.processed_folder, self.imap.failed_folder):
            if folder:
                await connection.ensure_folder(folder)
        uidvalidity = await connection.select(self.imap.folder)
        if uidvalidity != self.uidvalidity:
            if self.uidvalidity is not None:
                logger.warning(
                    "email.imap.uidvalidity_changed folder=%s old=%s new=%s",
                    self.imap.folder,
                    self.uidvalidity,
                    uidvalidity,
                )
            self.uidvalidity = uidvalidity
            self.last_uid = 0
            self._failures.clear()
            self._retry_at.clear()
            self._given_up.clear()

    async def _serve(self, connection: ImapConnection) -> None:
        """Scan, then wait (IDLE or poll), until the connection fails or we are stopped."""
        use_idle = connection.has("IDLE")
        while True:
            self._wake.clear()
            await self._scan(connection)
            async with self._scanned:
                self.scans += 1
                self._scanned.notify_all()
            # IDLE is renewed at the poll interval at the latest and every renewal is
            # followed by a scan, so a notification the server never sent (or that was
            # lost) delays a mail by one poll interval, not by a whole IDLE period
            wait = (
                min(self.imap.idle_renew_seconds, self.imap.poll_seconds)
                if use_idle
                else self.imap.poll_seconds
            )
            if self._retry_at:
                wait = max(0.0, min(wait, min(self._retry_at.values()) - self._now()))
            if wait <= 0:
                continue
            if use_idle:
                self.idling.set()
                try:
                    await connection.idle(renew=wait, wake=self._wake)
                finally:
                    self.idling.clear()
            else:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                except TimeoutError:
                    logger.debug("email.imap.poll.due")
            if connection.lost:
                raise ImapConnectionError("connection lost")

    async def _scan(self, connection: ImapConnection) -> None:
        assert connection.uidvalidity is not None
        sizes = await connection.sizes_above(self.last_uid)
        for uid in self._given_up:
            sizes.pop(uid, None)
        now = self._now()
        due = sorted(uid for uid, at in self._retry_at.items() if at <= now)
        if due:
            present = await connection.sizes_of(due)
            for uid in due:
                if uid not in present:  # gone: another poller moved it
                    self._retry_at.pop(uid, None)
            sizes.update(present)
        for uid in [u for u in sizes if u in self._retry_at and u not in due]:
            sizes.pop(uid)
        if not sizes:
            return
        limit = self.parse_limits.max_raw_bytes
        oversized = sorted(uid for uid, size in sizes.items() if size > limit)
        if oversized:
            await self._quarantine(connection, oversized, f"larger than {limit} bytes; not fetched")
            self._advance(oversized)
        batch: list[int] = []
        batch_bytes = 0
        for uid in sorted(uid for uid in sizes if uid not in oversized):
            if batch and (
                len(batch) >= self.policy.batch_messages
                or batch_bytes + sizes[uid] > self.policy.batch_bytes
            ):
                await self._ingest_batch(connection, batch)
                batch, batch_bytes = [], 0
            batch.append(uid)
            batch_bytes += sizes[uid]
        if batch:
            await self._ingest_batch(connection, batch)

    def _advance(self, uids: list[int]) -> None:
        fresh = [uid for uid in uids if uid not in self._retry_at]
        if fresh:
            self.last_uid = max(self.last_uid, *fresh)

    async def _ingest_batch(self, connection: ImapConnection, uids: list[int]) -> None:
        fetched = await connection.fetch(uids)
        done: dict[int, str] = {}  # uid → external id of what the core has taken
        failed: list[tuple[int, str]] = []
        systemic: _Systemic | None = None
        uidvalidity = connection.uidvalidity or 0
        parsed: list[tuple[FetchedMail, Inbound]] = []
        for mail in fetched:
            try:
                parsed.append((mail, await self._convert(mail, uidvalidity)))
            except Exception as exc:
                reason = self._failed(uidvalidity, mail.uid, "parse", exc)
                if reason:
                    failed.append((mail.uid, reason))
        # handed to the core together: it handles them in rounds (one transaction for
        # many mails), each sender's in the order they arrived
        outcomes = await asyncio.gather(
            *(self.handle(inbound) for _, inbound in parsed), return_exceptions=True
        )
        for (mail, inbound), outcome in zip(parsed, outcomes, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancelled, or the process is stopping
            if isinstance(outcome, TransientError | OSError | TimeoutError):
                # the core is unavailable: not this message's fault, do not count it
                systemic = _Systemic(f"core unavailable: {type(outcome).__name__}: {outcome}")
                continue
            if isinstance(outcome, Exception):
                reason = self._failed(uidvalidity, mail.uid, "handle", outcome)
                if reason:
                    failed.append((mail.uid, reason))
                continue
            done[mail.uid] = inbound.external_id
            logger.info(
                "email.inbound.%s uid=%s kind=%s conversation=%s",
                "duplicate" if outcome.duplicate else "handled",
                mail.uid,
                inbound.kind,
                outcome.conversation_id,
            )
        # move what the core has committed before giving up on the session; a mail
        # another poller claimed to move is left to it
        if done and self.imap.processed_folder:
            to_move = list(done)
            if self.claim_archive is not None:
                won = await self.claim_archive(self.kind, list(done.values()))
                to_move = [uid for uid, external_id in done.items() if external_id in won]
            if to_move:
                await connection.move(to_move, self.imap.processed_folder)
        for uid in done:
            self._retry_at.pop(uid, None)
            self._failures.pop((uidvalidity, uid), None)
        for uid, reason in failed:
            await self._quarantine(connection, [uid], reason)
        if systemic is not None:
            raise systemic
        self._advance([*done, *(uid for uid, _ in failed)])
        # a UID that vanished between listing and fetch was taken by another poller
        fetched_uids = {mail.uid for mail in fetched}
        self._advance([uid for uid in uids if uid not in fetched_uids])

    async def _convert(self, mail: FetchedMail, uidvalidity: int) -> Inbound:
        def work() -> Inbound:
            parsed = parse_mail(mail.raw, limits=self.parse_limits)
            verdict = classify(parsed, own_addresses=[self.desk_address])
            return inbound_from_mail(
                parsed,
                verdict,
                mailbox=self.imap.folder,
                uidvalidity=uidvalidity,
                uid=mail.uid,
                secret=self.secret,
            )

        if len(mail.raw) <= _INLINE_PARSE_BYTES:
            return work()
        # big mail: bounded by the parse limits, but kept off the event loop
        return await asyncio.to_thread(work)

    def _failed(self, uidvalidity: int, uid: int, stage: str, exc: Exception) -> str:
        key = (uidvalidity, uid)
        count = self._failures.get(key, 0) + 1
        self._failures[key] = count
        reason = f"{stage} failed {count}x: {type(exc).__name__}: {exc}"[:500]
        logger.warning(
            "email.inbound.failed uid=%s attempt=%d/%d stage=%s error=%s",
            uid,
            count,
            self.policy.max_attempts,
            stage,
            type(exc).__name__,
            exc_info=exc,
        )
        if count >= self.policy.max_attempts:
            self._retry_at.pop(uid, None)
            return reason
        self._retry_at[uid] = self._now() + self.policy.retry_seconds * (2 ** (count - 1))
        return ""

    async def _quarantine(self, connection: ImapConnection, uids: list[int], reason: str) -> None:
        for uid in uids:
            logger.error(
                "email.inbound.quarantined uid=%s folder=%s reason=%s",
                uid,
                self.imap.failed_folder,
                reason,
            )
            self.quarantined.append((uid, reason))
        if self.imap.failed_folder:
            await connection.move(uids, self.imap.failed_folder)
        else:
            self._given_up.update(uids)
        for uid in uids:
            self._retry_at.pop(uid, None)
