"""Pure converters: a parsed, classified mail → :class:`Inbound`; :class:`Outbound` → mail.

No I/O here; the IMAP and SMTP adapters call these and the tests drive them directly.
"""

from __future__ import annotations

import email.utils
import html
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any

from bot.types import Attachment, Inbound, Outbound, Sender
from channels.email.classify import Classification
from channels.email.parse import ParsedMail, message_ids
from channels.email.strip import split_reply
from channels.email.tokens import (
    conversation_from_addresses,
    conversation_of_reference,
    mint_message_id,
    reply_address,
)

CHANNEL = "email"
_TICKET_TAG = re.compile(r"\[\s*((?:INC|REQ|PRB)-\d{1,12})\s*\]", re.IGNORECASE)
_LINE_BREAKS = re.compile(r"[\r\n\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u2028\u2029\x85]+")
_QUOTED = re.compile(r"^\s{0,3}>")
PROACTIVE_KINDS = frozenset({"proactive", "status_update", "broadcast", "notice", "reminder"})


def ticket_hint(subject: str) -> str | None:
    """``INC-000123`` from a ``[INC-000123]`` subject tag (also REQ and PRB)."""
    match = _TICKET_TAG.search(subject or "")
    return match.group(1).upper() if match else None


def thread_key_for(mail: ParsedMail, *, secret: str | bytes) -> str:
    """Our signed token first (plus-address, then our Message-IDs), else the mail's own id.

    An In-Reply-To or References id counts only when it carries our valid signature
    (R29); anything else is passed on as ``references`` for the core to match within
    the same sender.
    """
    conversation = conversation_from_addresses((*mail.to, *mail.cc), secret=secret)
    if conversation is None:
        for reference in (*mail.in_reply_to, *reversed(mail.references)):
            conversation = conversation_of_reference(reference, secret=secret)
            if conversation is not None:
                break
    if conversation is not None:
        return f"conversation:{conversation}"
    if mail.message_id:
        return f"msgid:{mail.message_id}"
    return f"sha256:{mail.sha256}"


def new_text(mail: ParsedMail) -> str:
    """What the mail adds: reply-stripped; the unquoted lines if stripping left nothing."""
    reply = split_reply(mail.text).reply
    if reply:
        return reply
    unquoted = [line for line in mail.text.splitlines() if not _QUOTED.match(line)]
    return "\n".join(unquoted).strip()


def inbound_from_mail(
    mail: ParsedMail,
    classification: Classification,
    *,
    mailbox: str,
    uidvalidity: int,
    uid: int,
    secret: str | bytes,
    received_at: datetime | None = None,
) -> Inbound:
    """One :class:`Inbound` for one IMAP message (pure; the adapter supplies the ids)."""
    address = mail.from_address
    if address is not None:
        sender = Sender(
            external_id=address,
            display_name=mail.from_name,
            email=address,
            email_verified=True,
        )
    else:
        sender = Sender(
            external_id=f"unknown-sender:{mail.sha256[:16]}", display_name=mail.from_name
        )
    alt_ids = [f"sha256:{mail.sha256}"]
    if mail.message_id:
        alt_ids.insert(0, f"msgid:{mail.message_id}")
    references: list[str] = []
    for ref in (*mail.in_reply_to, *mail.references):
        if ref not in references and ref != mail.message_id:
            references.append(ref)
    if classification.kind in ("bounce", "complaint"):
        # a DSN rarely has In-Reply-To: the enclosed original names our Message-ID, which
        # is how the core attaches the bounce to the conversation it came from (R20)
        for ref in classification.original_message_ids:
            if ref not in references and ref != mail.message_id:
                references.append(ref)
    subject = mail.subject
    meta: dict[str, Any] = {
        "subject": subject,
        "message_id": mail.message_id,
        "classification": classification.kind,
        "classification_reason": classification.reason,
        "creates_ticket": classification.creates_ticket,
        "to": list(mail.to),
        "cc": list(mail.cc),
    }
    if classification.kind in ("bounce", "complaint"):
        meta["failed_recipients"] = list(classification.failed_recipients)
        meta["original_message_ids"] = list(classification.original_message_ids)
        meta["bounce_status"] = classification.bounce_status
        meta["permanent"] = classification.permanent
    if mail.truncated:
        meta["truncated"] = list(mail.truncation)
    if mail.dropped_attachments:
        meta["dropped_attachments"] = mail.dropped_attachments
    reply_to_address = mail.reply_to[0] if mail.reply_to else address
    return Inbound(
        channel=CHANNEL,
        external_id=f"imap:{mailbox}:{uidvalidity}:{uid}",
        sender=sender,
        text=new_text(mail),
        thread_key=thread_key_for(mail, secret=secret),
        received_at=received_at or mail.date,
        reply_to={
            "to": reply_to_address,
            "name": mail.from_name,
            "subject": subject,
            "in_reply_to": mail.message_id,
            "references": [*references, *([mail.message_id] if mail.message_id else [])],
        },
        ticket_hint=ticket_hint(subject),
        alt_ids=tuple(alt_ids),
        references=tuple(references),
        kind="message" if classification.kind == "human" else classification.kind,
        attachments=tuple(
            Attachment(
                filename=a.filename, content_type=a.content_type, size=a.size, content=a.content
            )
            for a in mail.attachments
        ),
        meta=meta,
    )


# --- outbound -----------------------------------------------------------------------------


def single_line(value: str, *, limit: int = 900) -> str:
    """A header-safe single line: CR, LF and other controls become spaces (R30)."""
    return " ".join(_LINE_BREAKS.sub(" ", value).split())[:limit]


def _address(value: str, name: str | None = None) -> Address:
    addr_spec = single_line(value, limit=320)
    if not re.fullmatch(r"[^\s<>@,;:\"]+@[^\s<>@,;:\"]+", addr_spec):
        raise ValueError(f"not a deliverable address: {addr_spec!r}")
    username, domain = addr_spec.rsplit("@", 1)
    return Address(
        display_name=single_line(name or "", limit=200), username=username, domain=domain
    )


def outbound_subject(outbound: Outbound) -> str:
    address = outbound.address
    subject = outbound.subject or str(address.get("subject") or "")
    subject = single_line(subject, limit=400)
    if address.get("subject") and not outbound.subject and not subject.lower().startswith("re:"):
        subject = f"Re: {subject}"
    if outbound.ticket_number and f"[{outbound.ticket_number}]".lower() not in subject.lower():
        subject = f"[{single_line(outbound.ticket_number, limit=40)}] {subject}".strip()
    return subject or "(no subject)"


def _text_body(outbound: Outbound) -> str:
    lines = [outbound.markdown.rstrip()]
    choices = [b.label for b in outbound.buttons] + list(outbound.quick_replies)
    if choices:
        lines.append("")
        lines.append("Reply with one of: " + ", ".join(f'"{c}"' for c in choices))
    return "\n".join(lines) + "\n"


def _html_body(text: str) -> str:
    """Every character of user text is escaped; only our own <p>/<br> tags are markup."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    rendered = "".join(
        "<p>" + "<br>\n".join(html.escape(line) for line in p.split("\n")) + "</p>\n"
        for p in paragraphs
    )
    return (
        f'<!DOCTYPE html>\n<html><body style="font-family: sans-serif">\n{rendered}</body></html>\n'
    )


def _ids(value: Any) -> list[str]:
    if value is None:
        return []
    items: Iterable[Any] = [value] if isinstance(value, str) else value
    out: list[str] = []
    for item in items:
        for found in message_ids(single_line(str(item))):
            if found not in out:
                out.append(found)
    return out


def message_from_outbound(
    outbound: Outbound,
    *,
    desk_address: str,
    secret: str | bytes,
    domain: str | None = None,
    desk_name: str | None = "IT Service Desk",
    now: datetime | None = None,
) -> EmailMessage:
    """Render one outbox row as a mail with our threading and loop-safety headers."""
    address: Mapping[str, Any] = outbound.address
    recipient = address.get("to")
    if not recipient:
        raise ValueError("outbound email has no recipient address")
    domain = domain or desk_address.rpartition("@")[2] or "localhost"
    msg = EmailMessage()
    msg["From"] = _address(desk_address, desk_name)
    msg["To"] = _address(str(recipient), address.get("name"))
    msg["Subject"] = outbound_subject(outbound)
    msg["Date"] = (
        email.utils.format_datetime(now) if now else email.utils.formatdate(localtime=False)
    )
    if outbound.outbox_id is not None:
        message_id = mint_message_id(
            outbound.outbox_id,
            secret=secret,
            domain=domain,
            conversation_id=outbound.conversation_id,
        )
    else:
        message_id = email.utils.make_msgid(domain=domain)
    msg["Message-ID"] = message_id
    in_reply_to = _ids(address.get("in_reply_to"))
    references = _ids(address.get("references"))
    if in_reply_to and in_reply_to[0] not in references:
        references.append(in_reply_to[0])
    if in_reply_to:
        msg["In-Reply-To"] = f"<{in_reply_to[0]}>"
    if references:
        msg["References"] = " ".join(f"<{r}>" for r in references[-20:])
    if outbound.conversation_id is not None:
        msg["Reply-To"] = _address(
            reply_address(desk_address, outbound.conversation_id, secret=secret), desk_name
        )
    if outbound.automatic:
        proactive = outbound.kind in PROACTIVE_KINDS
        msg["Auto-Submitted"] = "auto-generated" if proactive else "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["X-Deskbot-Outbox"] = str(outbound.outbox_id if outbound.outbox_id is not None else "none")
    if outbound.ticket_number:
        msg["X-Deskbot-Ticket"] = single_line(outbound.ticket_number, limit=40)
    text = _text_body(outbound)
    msg.set_content(text)
    msg.add_alternative(_html_body(text), subtype="html")
    return msg
