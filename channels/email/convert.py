"""Pure converters: a parsed, classified mail → :class:`Inbound`; :class:`Outbound` → mail.

No I/O here; the IMAP and SMTP adapters call these and the tests drive them directly.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.utils
import functools
import html
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email import policy
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
#
# An outbox row is rendered straight to wire bytes: the header and MIME layout are fixed
# (two text alternatives), so building an ``EmailMessage`` and flattening it again only
# cost time (about 5 ms a mail). Everything that needs care is done by the stdlib codecs:
# RFC 2047 encoded words (base64), quoted-printable (binascii), IDNA. The output is
# 7-bit clean, CRLF, folded at 78 characters; tests parse it back with policy.default.

_FOLD = 78  # RFC 5322's recommended line length
# UTF-8 bytes per encoded word: "=?utf-8?b?" + 52 base64 characters + "?=" = 64 characters,
# so a word fits after any header name we write and never passes RFC 2047's 75
_WORD_BYTES = 39
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_ATOM_PHRASE = re.compile(rf"{_ATEXT}(?: {_ATEXT})*")
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_NOT_7BIT = re.compile(rb"[^\t\n\x20-\x7e]")


def single_line(value: str, *, limit: int = 900) -> str:
    """A header-safe single line: CR, LF and other controls become spaces (R30)."""
    return " ".join(_LINE_BREAKS.sub(" ", value).split())[:limit]


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 base64 encoded words of at most 64 characters; no character is split.

    Decoders drop the whitespace between two encoded words, so a space of the text travels
    inside a word; a word ends after a space when one is in its second half (then even a
    decoder that keeps that whitespace, like Python's for display names, only doubles a
    space instead of splitting a word).
    """
    raw = text.encode("utf-8")
    words: list[str] = []
    start = 0
    while start < len(raw):
        end = start + _WORD_BYTES
        if end >= len(raw):
            end = len(raw)
        else:
            space = raw.rfind(b" ", start + _WORD_BYTES // 2, end)
            if space != -1:
                end = space + 1
            while raw[end] & 0xC0 == 0x80:  # a UTF-8 continuation byte
                end -= 1
        words.append(f"=?utf-8?b?{base64.b64encode(raw[start:end]).decode('ascii')}?=")
        start = end
    return words


def _text_tokens(value: str) -> list[str]:
    """An unstructured header value (single line) as foldable tokens."""
    if value.isascii() and "=?" not in value:  # "=?" would be decoded as an encoded word
        return value.split()
    return _encoded_words(value)


def _phrase_tokens(name: str) -> list[str]:
    """A display name (single line): atoms as they are, an ASCII name with specials as a
    quoted-string (folded at its spaces), anything else as encoded words."""
    if not name:
        return []
    if "=?" in name or not name.isascii():
        return _encoded_words(name)
    if _ATOM_PHRASE.fullmatch(name):
        return name.split(" ")
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return quoted.split(" ")


def _header(name: str, tokens: Iterable[str]) -> str:
    """``Name: token token…``, folded before a token that would pass 78 characters."""
    lines: list[str] = []
    line = f"{name}:"
    first = True
    for token in tokens:
        if not first and len(line) + 1 + len(token) > _FOLD:
            lines.append(line)
            line = ""
        line += f" {token}"
        first = False
    lines.append(line)
    return "\r\n".join(lines)


def _addr_spec(value: str) -> str:
    """A deliverable ASCII address (IDNA domain); ValueError for anything else."""
    addr_spec = single_line(value, limit=320)
    if not re.fullmatch(r"[^\s<>@,;:\"]+@[^\s<>@,;:\"]+", addr_spec):
        raise ValueError(f"not a deliverable address: {addr_spec!r}")
    local, domain = addr_spec.rsplit("@", 1)
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"not a deliverable domain: {domain!r}") from exc
    if not local.isascii():
        raise ValueError(f"a non-ASCII local part needs SMTPUTF8: {addr_spec!r}")
    if not (_DOT_ATOM.fullmatch(local) and _DOT_ATOM.fullmatch(domain)):
        raise ValueError(f"not a deliverable address: {addr_spec!r}")
    return f"{local}@{domain}"


def _mailbox(name: str, value: str, display_name: str | None) -> tuple[str, str]:
    """The address header and the bare address it names."""
    addr_spec = _addr_spec(value)
    phrase = _phrase_tokens(single_line(display_name or "", limit=200))
    if not phrase:
        return _header(name, [addr_spec]), addr_spec
    return _header(name, [*phrase, f"<{addr_spec}>"]), addr_spec


@functools.lru_cache(maxsize=16)
def _from_header(desk_address: str, desk_name: str | None) -> str:
    """The desk's From line: the same for every mail of a desk."""
    return _mailbox("From", desk_address, desk_name)[0]


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
            # a non-ASCII id has no valid header form; it cannot thread anywhere
            if found.isascii() and found not in out:
                out.append(found)
    return out


def _text_part(subtype: str, text: str) -> bytes:
    """One ``text/*`` part, its body 7bit when it can be, else QP or base64 (the shorter)."""
    raw = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    if not raw.endswith(b"\n"):
        raw += b"\n"
    if not _NOT_7BIT.search(raw) and all(len(line) <= _FOLD for line in raw.split(b"\n")):
        cte, body = "7bit", raw
    else:
        qp = binascii.b2a_qp(raw)  # soft breaks at 76; "=", trailing blanks, 8-bit encoded
        b64 = base64.encodebytes(raw)
        cte, body = ("base64", b64) if len(b64) < len(qp) else ("quoted-printable", qp)
    head = f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}'
    return head.encode("ascii") + b"\r\n\r\n" + body.replace(b"\n", b"\r\n")


@dataclass(frozen=True, slots=True)
class RenderedMail:
    """One outbox row as it goes on the wire."""

    data: bytes  # the whole message: CRLF line ends, 7-bit clean
    message_id: str  # without angle brackets (``Delivery.platform_id``)
    recipients: tuple[str, ...]  # the envelope recipients


def render_outbound(
    outbound: Outbound,
    *,
    desk_address: str,
    secret: str | bytes,
    domain: str | None = None,
    desk_name: str | None = "IT Service Desk",
    now: datetime | None = None,
) -> RenderedMail:
    """Render one outbox row as a mail with our threading and loop-safety headers."""
    address: Mapping[str, Any] = outbound.address
    recipient = address.get("to")
    if not recipient:
        raise ValueError("outbound email has no recipient address")
    domain = domain or desk_address.rpartition("@")[2] or "localhost"
    to_header, to_address = _mailbox("To", str(recipient), address.get("name"))
    if outbound.outbox_id is not None:
        message_id = mint_message_id(
            outbound.outbox_id,
            secret=secret,
            domain=domain,
            conversation_id=outbound.conversation_id,
        )
    else:
        message_id = email.utils.make_msgid(domain=domain)
    headers = [
        _from_header(desk_address, desk_name),
        to_header,
        _header("Subject", _text_tokens(outbound_subject(outbound))),
        "Date: "
        + (email.utils.format_datetime(now) if now else email.utils.formatdate(localtime=False)),
        f"Message-ID: {message_id}",
    ]
    in_reply_to = _ids(address.get("in_reply_to"))
    references = _ids(address.get("references"))
    if in_reply_to and in_reply_to[0] not in references:
        references.append(in_reply_to[0])
    if in_reply_to:
        headers.append(f"In-Reply-To: <{in_reply_to[0]}>")
    if references:
        headers.append(_header("References", (f"<{r}>" for r in references[-20:])))
    if outbound.conversation_id is not None:
        reply_to = reply_address(desk_address, outbound.conversation_id, secret=secret)
        headers.append(_mailbox("Reply-To", reply_to, desk_name)[0])
    if outbound.automatic:
        proactive = outbound.kind in PROACTIVE_KINDS
        headers.append(f"Auto-Submitted: {'auto-generated' if proactive else 'auto-replied'}")
    headers.append("X-Auto-Response-Suppress: All")
    headers.append(
        f"X-Deskbot-Outbox: {outbound.outbox_id if outbound.outbox_id is not None else 'none'}"
    )
    if outbound.ticket_number:
        ticket = single_line(outbound.ticket_number, limit=40)
        headers.append(_header("X-Deskbot-Ticket", _text_tokens(ticket)))
    text = _text_body(outbound)
    parts = (_text_part("plain", text), _text_part("html", _html_body(text)))
    boundary = f"=_deskbot_{secrets.token_hex(12)}".encode("ascii")
    while any(boundary in part for part in parts):  # only a 7bit body could hold it
        boundary = f"=_deskbot_{secrets.token_hex(12)}".encode("ascii")
    headers.append("MIME-Version: 1.0")
    headers.append(f'Content-Type: multipart/alternative;\r\n boundary="{boundary.decode()}"')
    delimiter = b"--" + boundary
    data = b"".join(
        (
            "\r\n".join(headers).encode("ascii"),
            b"\r\n\r\n",
            *(delimiter + b"\r\n" + part + b"\r\n" for part in parts),
            delimiter,
            b"--\r\n",
        )
    )
    return RenderedMail(data=data, message_id=message_id.strip("<>"), recipients=(to_address,))


def message_from_outbound(
    outbound: Outbound,
    *,
    desk_address: str,
    secret: str | bytes,
    domain: str | None = None,
    desk_name: str | None = "IT Service Desk",
    now: datetime | None = None,
) -> EmailMessage:
    """:func:`render_outbound`'s mail parsed back with ``policy.default`` (inspection, tests)."""
    rendered = render_outbound(
        outbound,
        desk_address=desk_address,
        secret=secret,
        domain=domain,
        desk_name=desk_name,
        now=now,
    )
    message = email.message_from_bytes(rendered.data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message
