"""Who wrote this mail: a person, or a machine that must never get a ticket or an answer.

Rules run in a fixed order and the first that matches decides; every decision carries a
short reason naming the header or rule, so an operator can answer "why did this mail not
open a ticket?" (``deskbot email inspect``):

1. ``own``: the sender is one of the desk's own addresses, or the mail carries the
   ``X-Deskbot-*`` marker our outbound mail sets (a loop through a forwarder).
2. ``complaint``: an ARF abuse report (``multipart/report; report-type=feedback-report``).
3. ``bounce``: an RFC 3464 DSN, or a non-standard bounce (a mailer-daemon/postmaster
   sender, ``X-Failed-Recipients``, a non-delivery subject). Failed recipients and the
   original Message-IDs are extracted so the core can mark the address and attach the
   bounce to the ticket of the mail that bounced.
4. ``receipt``: a read receipt (RFC 8098 MDN or a "Read:" subject).
5. ``auto_reply``: RFC 3834 ``Auto-Submitted`` other than ``no``, ``X-Autoreply``,
   ``X-Autorespond``, ``X-Auto-Response-Suppress``, ``Precedence: bulk|list|junk|
   auto_reply``, ``List-Id``/``List-Unsubscribe``, an empty ``Return-Path: <>``, or an
   out-of-office subject in one of several languages.
6. otherwise ``human`` — a ticket, unless there is no sender address to answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from channels.email.parse import ParsedMail, message_ids

KINDS = ("human", "auto_reply", "bounce", "complaint", "receipt", "own")
MARKER_PREFIX = "x-deskbot-"

_I = re.IGNORECASE
_DAEMON_LOCALPARTS = re.compile(
    r"^(?:mailer-daemon|mailer_daemon|maildaemon|mail-daemon|postmaster|mdaemon|"
    r"mail\.delivery\.system|mail-delivery-system|ndr|nobody-ndr|bounce|bounces|"
    r"smtp_mail_service|e\d+_smtp_mail_service|inetgw\d*|imss|symantec_antivirus.*)$",
    _I,
)
_BOUNCE_SUBJECT = re.compile(
    r"(?:undeliver|undelivered mail|returned mail|return(?:ed)? to sender|"
    r"delivery status notification|delivery (?:status )?(?:failure|failed|problem|report)|"
    r"delivery notification|mail delivery (?:failed|failure|problem|subsystem|warning)|"
    r"failure notice|failure delivery|failed mail|mail not delivered|non[- ]?delivery|"
    r"could not be delivered|delivery has failed|message delayed|delayed mail|"
    r"message not delivered|mail system error|error during delivery|processing error|"
    r"nondeliverable|not delivered|non remis|unzustellbar|nicht zustellbar|no entregado|"
    r"non recapitato|onbestelbaar|não entregue|automatically rejected mail|"
    r"delivery failure|mail delivery|warning: message .{0,40} delayed|"
    r"could not send message|user unknown|nameserver error|utilisateur non recens)",
    _I,
)
_DAEMON_NAME = re.compile(
    r"(?:mail delivery|mailer[- ]daemon|postmaster|delivery subsystem|mail administrator|"
    r"system administrator|mail ?server|lsmtp)",
    _I,
)
_BOUNCE_BODY = re.compile(
    r"(?:could not be delivered|undeliverable|delivery to the following recipients? failed|"
    r"permanent (?:fatal )?error|user unknown|no such user|mailbox unavailable|"
    r"unknown user|does not exist|recipient address rejected|delivery has failed|"
    r"message was not delivered|returned to sender|failed permanently|"
    r"delivery to the following recipient|this is the mail system at host|"
    r"i'm sorry to have to inform you|unable to deliver|delivery failed)",
    _I,
)
_RECEIPT_SUBJECT = re.compile(
    r"^\s*(?:read|not read|gelesen|nicht gelesen|lu|non lu|leído|leido|letto|gelezen|"
    r"läst|lest|przeczytano|прочитано|read receipt|return receipt|lesebestätigung|"
    r"accusé de lecture|confirmación de lectura)\s*[:：]",
    _I,
)
_AUTO_SUBJECT = re.compile(
    r"(?:^\s*auto(?:matic)?[- _]?(?:reply|response|answer)\b|out of (?:the )?office|"
    r"\bautoreply\b|\bauto[- ]?generated\b|^\s*\[auto\b|\bvacation\b|on vacation|"
    r"on leave|away from (?:the|my) office|abwesenheit|automatische antwort|"
    r"réponse automatique|reponse automatique|absence du bureau|absent du bureau|"
    r"respuesta automática|respuesta automatica|fuera de la oficina|ausencia|"
    r"risposta automatica|fuori ufficio|automatisch antwoord|afwezig|"
    r"resposta automática|resposta automatica|fora do escritório|frånvaro|autosvar|"
    r"fravær|poza biurem|automatyczna odpowiedź|автоматический ответ|"
    r"нет на месте|自動応答|不在|自动回复|自動回覆)",
    _I,
)
_PRECEDENCE_AUTO = {"bulk", "list", "junk", "auto_reply", "auto-reply"}


@dataclass(frozen=True, slots=True)
class Classification:
    """What kind of mail this is, whether it opens a ticket, and why."""

    kind: str
    creates_ticket: bool
    reason: str
    failed_recipients: tuple[str, ...] = ()
    original_message_ids: tuple[str, ...] = ()
    bounce_status: str | None = None
    permanent: bool | None = None


def _localpart(address: str | None) -> str:
    return (address or "").split("@", 1)[0]


def _address_key(address: str) -> str:
    """``desk+token@x`` is the desk's address too (our reply-to plus-addressing)."""
    local, _, domain = address.lower().partition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


def _own(mail: ParsedMail, own_addresses: Iterable[str]) -> Classification | None:
    own = {_address_key(a) for a in own_addresses if a and "@" in a}
    if mail.from_address and _address_key(mail.from_address) in own:
        return Classification("own", False, f"From is the desk's own address {mail.from_address}")
    for name, _ in mail.headers:
        if name.startswith(MARKER_PREFIX):
            return Classification("own", False, f"carries our own marker header {name}")
    return None


# --- bounces ------------------------------------------------------------------------------

_ADDRESS = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._%+\-=]{0,63}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63}){0,8}"
    r"\.[A-Za-z]{2,24}\b"
)
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_BODY_STOP = re.compile(
    r"^(?:-{2,}.{0,40}(?:original|returned|undelivered|copy|headers|message).{0,40}|"
    r"received: .*|return-path: .*|.{0,40}original message follows.{0,40})$",
    _I,
)
_FAILURE_WORDS = re.compile(
    r"(?:unknown|fail|reject|invalid|not found|no such|does not exist|doesn't exist|"
    r"undeliver|unavailable|quota|full|disabled|inactive|denied|refused|bounced|"
    r"permanent|error|could not|couldn't|unable|not deliver|deferred|delayed|retry|"
    r"no mailbox|unrouteable|host not found|550|551|552|553|554|5\.\d\.\d|4\.\d\.\d)",
    _I,
)


def _dsn_fields(report: str) -> tuple[list[str], list[str], str | None, bool | None]:
    """Failed recipients, delayed recipients, first status and permanence of a DSN."""
    failed: list[str] = []
    delayed: list[str] = []
    status: str | None = None
    for block in re.split(r"\n\s*\n", report):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, sep, value = line.partition(":")
            if sep:
                fields.setdefault(name.strip().lower(), value.strip())
        recipient = fields.get("final-recipient") or fields.get("original-recipient")
        if not recipient:
            continue
        address = recipient.split(";", 1)[-1].strip().strip("<>").lower()
        action = fields.get("action", "failed").lower()
        block_status = fields.get("status")
        if block_status and status is None:
            match = _STATUS.search(block_status)
            status = match.group(0) if match else None
        if "@" not in address:
            continue
        target = delayed if action.startswith("delay") else failed
        if action.startswith(("failed", "delay")) and address not in target:
            target.append(address)
    permanent = None
    if status:
        permanent = status.startswith("5")
    elif failed or delayed:
        permanent = bool(failed)
    return failed, delayed, status, permanent


def _body_recipients(mail: ParsedMail) -> list[str]:
    """Addresses a non-standard bounce names as failed, from its human-readable part."""
    ignore = {mail.from_address or ""} | set(mail.to)
    found: list[str] = []
    lines = mail.text.splitlines()[:150]
    for index, line in enumerate(lines):
        if _BODY_STOP.match(line.strip()):
            break
        addresses = _ADDRESS.findall(line)
        if not addresses:
            continue
        context = " ".join(lines[max(0, index - 2) : index + 3])
        angle_colon = re.search(r"<[^<>\s]+@[^<>\s]+>\s*:", line)
        if not (angle_colon or _FAILURE_WORDS.search(context)):
            continue
        for address in addresses:
            address = address.strip(".").lower()
            local = _localpart(address)
            if address in ignore or _DAEMON_LOCALPARTS.match(local) or address in found:
                continue
            found.append(address)
    return found[:20]


def _original_ids(mail: ParsedMail) -> tuple[str, ...]:
    ids = list(mail.enclosed_message_ids)
    for line in mail.text.splitlines()[:2000]:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == "message-id":
            ids.extend(i for i in message_ids(value) if i not in ids)
    return tuple(i for i in ids if i != mail.message_id)[:20]


def _bounce(mail: ParsedMail) -> Classification | None:
    reason: str | None = None
    report_type = (mail.report_type or "").lower()
    if report_type == "delivery-status" or mail.delivery_status:
        reason = "multipart/report; report-type=delivery-status (RFC 3464 DSN)"
    elif mail.header("x-failed-recipients"):
        reason = "X-Failed-Recipients header"
    else:
        local = _localpart(mail.from_address)
        daemon = bool(_DAEMON_LOCALPARTS.match(local)) or bool(
            mail.from_name and _DAEMON_NAME.search(mail.from_name)
        )
        subject_says = bool(_BOUNCE_SUBJECT.search(mail.subject))
        if _DAEMON_LOCALPARTS.match(local):
            reason = f"sent by {mail.from_address}: a mail system, not a person"
        elif daemon and (subject_says or _BOUNCE_BODY.search(mail.text[:5000]) or not mail.subject):
            reason = f"sent by {mail.from_address or mail.from_name} with a non-delivery notice"
        elif subject_says and (
            mail.from_address is None
            or daemon
            or _BOUNCE_BODY.search(mail.text[:5000])
            or mail.enclosed_message_ids
            or (mail.header("return-path") or "").strip() in ("<>", "")
        ):
            reason = f"non-delivery subject {mail.subject[:60]!r}"
    if reason is None:
        return None
    failed: list[str] = []
    status: str | None = None
    permanent: bool | None = None
    if mail.delivery_status:
        failed, delayed, status, permanent = _dsn_fields(mail.delivery_status)
        failed = failed or delayed
    extra = mail.header("x-failed-recipients")
    if extra:
        for address in _ADDRESS.findall(extra):
            if address.lower() not in failed:
                failed.append(address.lower())
    if not failed:
        failed = _body_recipients(mail)
    if status is None:
        match = _STATUS.search(mail.text[:5000])
        status = match.group(0) if match else None
        if status:
            permanent = status.startswith("5")
    return Classification(
        "bounce",
        False,
        reason,
        failed_recipients=tuple(failed),
        original_message_ids=_original_ids(mail),
        bounce_status=status,
        permanent=permanent,
    )


# --- the rest -----------------------------------------------------------------------------


def _auto_reply(mail: ParsedMail) -> Classification | None:
    auto_submitted = (mail.header("auto-submitted") or "").strip()
    if auto_submitted and auto_submitted.split(";", 1)[0].strip().lower() != "no":
        return Classification("auto_reply", False, f"Auto-Submitted: {auto_submitted[:60]}")
    for name in ("x-autoreply", "x-autorespond", "x-autoresponder", "x-autogenerated"):
        value = mail.header(name)
        if value is not None and value.strip().lower() not in ("no", "false", "0"):
            return Classification("auto_reply", False, f"{_title(name)}: {value[:40]}")
    suppress = mail.header("x-auto-response-suppress")
    if suppress is not None:
        return Classification("auto_reply", False, f"X-Auto-Response-Suppress: {suppress[:40]}")
    precedence = (mail.header("precedence") or "").strip().lower()
    if precedence in _PRECEDENCE_AUTO:
        return Classification("auto_reply", False, f"Precedence: {precedence}")
    if mail.header("list-id") is not None:
        return Classification("auto_reply", False, "List-Id: mailing-list mail")
    if mail.header("list-unsubscribe") is not None:
        return Classification("auto_reply", False, "List-Unsubscribe: bulk mail")
    return_path = mail.header("return-path")
    if return_path is not None and return_path.strip().strip("<>").strip() == "":
        return Classification("auto_reply", False, "Return-Path: <> (null sender)")
    if _AUTO_SUBJECT.search(mail.subject):
        return Classification("auto_reply", False, f"auto-reply subject {mail.subject[:60]!r}")
    return None


def _receipt(mail: ParsedMail) -> Classification | None:
    if (mail.report_type or "").lower() == "disposition-notification":
        return Classification("receipt", False, "report-type=disposition-notification (MDN)")
    if mail.disposition_notification:
        return Classification("receipt", False, "message/disposition-notification part (MDN)")
    if _RECEIPT_SUBJECT.match(mail.subject):
        return Classification("receipt", False, f"read-receipt subject {mail.subject[:60]!r}")
    return None


def _complaint(mail: ParsedMail) -> Classification | None:
    if (mail.report_type or "").lower() == "feedback-report" or mail.feedback_report:
        return Classification(
            "complaint",
            False,
            "multipart/report; report-type=feedback-report (ARF complaint)",
            original_message_ids=_original_ids(mail),
        )
    return None


def _title(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


def classify(mail: ParsedMail, *, own_addresses: Iterable[str] = ()) -> Classification:
    """Classify one parsed mail. Pure; the first matching rule decides."""
    found = _own(mail, own_addresses)
    for rule in (_complaint, _bounce, _receipt, _auto_reply):
        if found is not None:
            return found
        found = rule(mail)
    if found is not None:
        return found
    if mail.from_address is None:
        return Classification("human", False, "no sender address: nobody to answer")
    return Classification("human", True, "no automatic-mail header or pattern: a person wrote it")
