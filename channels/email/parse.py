"""Raw RFC 5322 bytes → one frozen :class:`ParsedMail`, robust to whatever arrives.

The standard library parses (``policy.default``; ``compat32`` when that raises). Every
header is read through a fallback that decodes encoded-words and 8-bit bytes itself, so a
bad charset, a broken address list or a 210 KB header never stops the poller. Work is
bounded: the raw size, the number of MIME parts walked, the bytes decoded and the length
of the text are capped, and :attr:`ParsedMail.truncated` records that a cap was hit.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.header
import email.utils
import hashlib
import quopri
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import Message

from channels.email.charset import decode_bytes
from channels.email.htmltext import html_to_text


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """How much work one mail may cost. The defaults suit a service desk mailbox."""

    max_raw_bytes: int = 40 * 1024 * 1024
    max_parts: int = 400
    max_depth: int = 25
    max_text_bytes_per_part: int = 1024 * 1024
    max_decode_bytes: int = 30 * 1024 * 1024
    max_text_chars: int = 100_000
    max_headers: int = 400
    max_header_chars: int = 4000
    max_attachments: int = 20
    max_attachment_bytes: int = 10 * 1024 * 1024
    max_filename_chars: int = 120
    max_report_chars: int = 20_000


DEFAULT_LIMITS = ParseLimits()


@dataclass(frozen=True, slots=True)
class ParsedAttachment:
    """A file of a mail; ``content`` is None when it was over the size limit."""

    filename: str
    content_type: str
    size: int
    content: bytes | None
    inline: bool = False


@dataclass(frozen=True, slots=True)
class ParsedMail:
    """What one raw mail says, decoded and bounded. Pure data; no I/O."""

    from_address: str | None
    from_name: str | None
    to: tuple[str, ...]
    cc: tuple[str, ...]
    reply_to: tuple[str, ...]
    subject: str
    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    date: datetime | None
    content_type: str
    text: str
    text_from_html: bool
    attachments: tuple[ParsedAttachment, ...]
    part_types: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]
    report_type: str | None = None
    delivery_status: str | None = None
    feedback_report: str | None = None
    disposition_notification: str | None = None
    enclosed_message_ids: tuple[str, ...] = ()
    enclosed_subjects: tuple[str, ...] = ()
    defects: tuple[str, ...] = ()
    truncated: bool = False
    truncation: tuple[str, ...] = ()
    dropped_attachments: int = 0
    size: int = 0
    sha256: str = ""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), decoded."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None

    def header_values(self, name: str) -> tuple[str, ...]:
        wanted = name.lower()
        return tuple(value for key, value in self.headers if key == wanted)

    def has_header(self, name: str) -> bool:
        return self.header(name) is not None


# --- headers ------------------------------------------------------------------------------

_ENCODED_WORD = re.compile(r"=\?[^?\s]{1,40}\?[bBqQ]\?[^?\s]*\?=")
_MSGID = re.compile(r"<([^<>\s]{1,500})>")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _has_escapes(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def _unescape_bytes(value: str) -> str:
    """Header strings from the bytes parser carry 8-bit bytes as surrogate escapes."""
    if not _has_escapes(value):
        return value
    return decode_bytes(value.encode("utf-8", "surrogateescape"), "utf-8")


def decode_header_value(value: str) -> str:
    """Decode encoded-words and stray 8-bit bytes of one raw header value; never raises."""
    value = _unescape_bytes(value)
    if "=?" not in value:
        return " ".join(value.split())
    try:
        pieces = email.header.decode_header(value)
    except Exception:
        return " ".join(value.split())
    out: list[str] = []
    previous_encoded = False
    for chunk, charset in pieces:
        if isinstance(chunk, bytes):
            text = decode_bytes(chunk, charset or "utf-8")
            encoded = charset is not None
        else:
            text, encoded = chunk, False
        # Whitespace between two encoded-words is not part of the text (RFC 2047 6.2).
        if out and not (previous_encoded and encoded) and not text.startswith(" "):
            if not out[-1].endswith(" ") and (encoded or previous_encoded):
                out.append(" ")
        out.append(text)
        previous_encoded = encoded
    return " ".join("".join(out).split())


_LONG_HEADER = 8000


def _raw_headers(msg: Message) -> list[tuple[str, str]]:
    try:
        return [(str(k), str(v)) for k, v in msg.raw_items()]
    except Exception:
        return []


def _header_text(msg: Message, name: str, raw: list[tuple[str, str]]) -> str | None:
    """A decoded header value: policy.default first, our own decoder when it fails."""
    raw_value = next((v for k, v in raw if k.lower() == name.lower()), None)
    if raw_value is None:
        return None
    if len(raw_value) > _LONG_HEADER:
        # policy.default's header parser is slow on giant values; decode a prefix only.
        return decode_header_value(raw_value[:_LONG_HEADER])
    try:
        parsed = msg.get(name)
        text = str(parsed) if parsed is not None else None
    except Exception:
        text = None
    if text is None or _ENCODED_WORD.search(text) or _has_escapes(text):
        text = decode_header_value(raw_value)
    return " ".join(text.split())


def _addresses(msg: Message, name: str, raw: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``[(display_name, address)]`` of an address header; the angle-addr always wins."""
    values = [v[:_LONG_HEADER] for k, v in raw if k.lower() == name.lower()]
    if not values:
        return []
    result: list[tuple[str, str]] = []
    try:
        header = msg.get(name) if len(values[0]) < _LONG_HEADER else None
        for address in getattr(header, "addresses", ()):
            spec = str(address.addr_spec or "")
            if spec and "@" in spec:
                result.append((str(address.display_name or ""), spec))
    except Exception:
        result = []
    fallback: list[tuple[str, str]] = []
    try:
        decoded = [decode_header_value(v) for v in values]
        fallback = [(n, a) for n, a in email.utils.getaddresses(decoded) if a]
    except Exception:
        fallback = []
    if not result:
        return fallback
    # policy.default drops an old-style "(John Doe)" comment name; getaddresses keeps it.
    names = {a.lower(): n for n, a in fallback if n}
    return [(n or names.get(a.lower(), ""), a) for n, a in result]


def _clean_address(address: str) -> str | None:
    address = address.strip().strip("<>").strip()
    if not address or any(ch.isspace() for ch in address) or _CONTROL.search(address):
        return None
    if address.count("@") != 1 or len(address) > 320:
        return None
    local, domain = address.split("@")
    if not local or not domain:
        return None
    return f"{local}@{domain.lower()}".lower()


def _clean_name(name: str, address: str | None) -> str | None:
    name = " ".join(_CONTROL.sub(" ", name).split()).strip("\"' ")
    if not name:
        return None
    if address is not None and name.lower() == address.lower():
        return None
    return name[:200]


def message_ids(value: str | None) -> tuple[str, ...]:
    """Message-ids in a header value, without angle brackets, in order, unique."""
    if not value:
        return ()
    found = _MSGID.findall(value)
    if not found:
        token = value.strip()
        found = [token] if token and " " not in token and len(token) <= 500 else []
    seen: list[str] = []
    for item in found:
        if item not in seen:
            seen.append(item)
    return tuple(seen[:100])


# --- bodies -------------------------------------------------------------------------------


class _Walk:
    """State of one bounded walk over the MIME tree."""

    def __init__(self, limits: ParseLimits) -> None:
        self.limits = limits
        self.parts = 0
        self.decoded = 0
        self.part_types: list[str] = []
        self.texts: list[str] = []
        self.text_from_html = False
        self.attachments: list[ParsedAttachment] = []
        self.dropped_attachments = 0
        self.truncation: list[str] = []
        self.defects: list[str] = []
        self.report_type: str | None = None
        self.delivery_status: str | None = None
        self.feedback_report: str | None = None
        self.disposition: str | None = None
        self.enclosed_ids: list[str] = []
        self.enclosed_subjects: list[str] = []

    def note(self, reason: str) -> None:
        if reason not in self.truncation:
            self.truncation.append(reason)


def _content_type(part: Message) -> str:
    try:
        ctype = part.get_content_type()
    except Exception:
        return "text/plain"
    return ctype if re.fullmatch(r"[a-z0-9.+\-]+/[a-z0-9.+\-]+", ctype or "") else "text/plain"


def _param(part: Message, name: str, header: str = "content-type") -> str | None:
    try:
        value = part.get_param(name, header=header)
    except Exception:
        return None
    if value is None:
        return None
    if isinstance(value, tuple):
        try:
            value = email.utils.collapse_rfc2231_value(value)
        except Exception:
            value = str(value[2])
    return decode_header_value(str(value))


def _disposition(part: Message) -> str | None:
    try:
        value = part.get("content-disposition")
    except Exception:
        return None
    if value is None:
        return None
    return str(value).split(";", 1)[0].strip().lower() or None


def _filename(part: Message) -> str | None:
    name = _param(part, "filename", "content-disposition") or _param(part, "name")
    return name or None


def sanitise_filename(name: str, *, max_chars: int = 120) -> str:
    """A safe file name: no directories, no control characters, bounded length."""
    name = unicodedata.normalize("NFC", name)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = name.strip().strip(".").strip()
    if not name:
        return "attachment"
    if len(name) > max_chars:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 10:
            name = stem[: max_chars - len(ext) - 1] + "." + ext
        else:
            name = name[:max_chars]
    return name


def _encoded_payload(part: Message) -> str | bytes:
    try:
        payload = part.get_payload(decode=False)
    except Exception:
        return ""
    return payload if isinstance(payload, str | bytes) else ""


def _decode_payload(part: Message, walk: _Walk, limit: int) -> tuple[bytes, int, bool]:
    """Decoded bytes (at most ``limit``), the (estimated) full size, and whether cut."""
    encoded = _encoded_payload(part)
    try:
        cte = str(part.get("content-transfer-encoding", "") or "").strip().lower()
    except Exception:
        cte = ""
    raw_len = len(encoded)
    estimate = raw_len * 3 // 4 if cte == "base64" else raw_len
    budget = min(limit, walk.limits.max_decode_bytes - walk.decoded)
    if budget <= 0:
        walk.note("decode budget")
        return b"", estimate, True
    if estimate <= budget:
        try:
            data = part.get_payload(decode=True)
        except Exception:
            data = None
        if not isinstance(data, bytes):
            data = encoded.encode("utf-8", "surrogateescape") if isinstance(encoded, str) else b""
        walk.decoded += len(data)
        if len(data) > budget:
            return data[:budget], len(data), True
        return data, len(data), False
    # Too big to decode whole: decode a prefix only, so a giant part costs bounded work.
    text = encoded if isinstance(encoded, str) else encoded.decode("latin-1")
    if cte == "base64":
        chunk = re.sub(r"[^A-Za-z0-9+/]", "", text[: budget * 2])
        chunk = chunk[: (budget * 4 // 3) // 4 * 4]
        try:
            data = base64.b64decode(chunk)
        except (binascii.Error, ValueError):
            data = b""
    elif cte == "quoted-printable":
        data = quopri.decodestring(text[: budget * 3].encode("latin-1", "replace"))
    else:
        data = text[:budget].encode("utf-8", "surrogateescape")
    data = data[:budget]
    walk.decoded += len(data)
    return data, estimate, True


def _part_text(part: Message, walk: _Walk) -> str:
    data, _, cut = _decode_payload(part, walk, walk.limits.max_text_bytes_per_part)
    if cut:
        walk.note("text part")
    charset = _param(part, "charset")
    return decode_bytes(data, charset).replace("\r\n", "\n").replace("\r", "\n")


def _html_text(part: Message, walk: _Walk) -> str:
    text, cut = html_to_text(_part_text(part, walk), max_chars=walk.limits.max_text_chars)
    if cut:
        walk.note("html text")
    return text


def _is_attachment(part: Message, ctype: str) -> bool:
    disposition = _disposition(part)
    if disposition == "attachment":
        return True
    if ctype in ("text/plain", "text/html") and disposition != "attachment":
        return False
    return _filename(part) is not None or not ctype.startswith("text/")


def _add_attachment(part: Message, ctype: str, walk: _Walk) -> None:
    limits = walk.limits
    if len(walk.attachments) >= limits.max_attachments:
        walk.dropped_attachments += 1
        walk.note("attachment count")
        return
    name = _filename(part) or ""
    data, size, cut = _decode_payload(part, walk, limits.max_attachment_bytes)
    if size == 0 and not data:
        return  # an empty attachment carries nothing worth storing
    if cut:
        walk.note("attachment size")
    walk.attachments.append(
        ParsedAttachment(
            filename=sanitise_filename(name, max_chars=limits.max_filename_chars),
            content_type=ctype,
            size=size,
            content=None if cut else data,
            inline=_disposition(part) == "inline",
        )
    )


def _report_text(part: Message, walk: _Walk) -> str:
    """A message/delivery-status (or feedback report) body as ``Field: value`` lines."""
    try:
        payload = part.get_payload()
    except Exception:
        payload = None
    if isinstance(payload, list):
        blocks = []
        for block in payload[:200]:
            if isinstance(block, Message):
                lines = [f"{k}: {decode_header_value(str(v))}" for k, v in _raw_headers(block)]
                blocks.append("\n".join(lines))
        text = "\n\n".join(blocks)
    else:
        text = _part_text(part, walk)
    return text[: walk.limits.max_report_chars]


def _walk(part: Message, walk: _Walk, depth: int) -> None:
    if walk.parts >= walk.limits.max_parts:
        walk.note("part count")
        return
    if depth > walk.limits.max_depth:
        walk.note("nesting depth")
        return
    walk.parts += 1
    ctype = _content_type(part)
    walk.part_types.append(ctype)
    for defect in getattr(part, "defects", ())[:20]:
        name = type(defect).__name__
        if name not in walk.defects:
            walk.defects.append(name)
    try:
        multipart = part.is_multipart()
    except Exception:
        multipart = False
    if ctype in ("message/rfc822", "message/global"):
        _enclosed(part, walk, depth)
        return
    if ctype == "text/rfc822-headers":
        _enclosed_headers(_part_text(part, walk), walk)
        return
    if ctype in ("message/delivery-status", "message/global-delivery-status"):
        walk.delivery_status = _report_text(part, walk)
        return
    if ctype == "message/feedback-report":
        walk.feedback_report = _report_text(part, walk)
        return
    if ctype in ("message/disposition-notification", "message/global-disposition-notification"):
        walk.disposition = _report_text(part, walk)
        return
    if multipart:
        try:
            children = part.get_payload()
        except Exception:
            children = []
        if not isinstance(children, list):
            return
        if ctype == "multipart/report" and walk.report_type is None:
            walk.report_type = (_param(part, "report-type") or "").lower() or None
        if ctype == "multipart/alternative":
            _alternative([c for c in children if isinstance(c, Message)], walk, depth)
            return
        for child in children:
            if isinstance(child, Message):
                _walk(child, walk, depth + 1)
        return
    if ctype.startswith("multipart/"):
        ctype = "text/plain"  # declared multipart without a usable boundary
    if _is_attachment(part, ctype):
        _add_attachment(part, ctype, walk)
    elif ctype == "text/html":
        text = _html_text(part, walk)
        if text.strip():
            walk.texts.append(text)
            walk.text_from_html = True
    elif ctype.startswith("text/"):
        text = _part_text(part, walk)
        if text.strip():
            walk.texts.append(text)


def _alternative(children: list[Message], walk: _Walk, depth: int) -> None:
    """Keep the plain text of an alternative unless it is empty, then the HTML; the
    other alternatives still contribute their attachments (inline images)."""
    ordered = sorted(
        children,
        key=lambda c: {"text/plain": 0, "text/html": 2}.get(_content_type(c), 1),
    )
    chosen = False
    for child in ordered:
        before, from_html = len(walk.texts), walk.text_from_html
        _walk(child, walk, depth + 1)
        if chosen:
            del walk.texts[before:]
            walk.text_from_html = from_html
        elif len(walk.texts) > before:
            chosen = True


def _enclosed(part: Message, walk: _Walk, depth: int) -> None:
    try:
        payload = part.get_payload()
    except Exception:
        payload = None
    inner = payload[0] if isinstance(payload, list) and payload else None
    if not isinstance(inner, Message):
        if isinstance(payload, str):
            _enclosed_headers(payload[:50_000], walk)
        return
    raw = _raw_headers(inner)
    ids = message_ids(_header_text(inner, "message-id", raw))
    walk.enclosed_ids.extend(i for i in ids if i not in walk.enclosed_ids)
    subject = _header_text(inner, "subject", raw)
    if subject:
        walk.enclosed_subjects.append(subject)
    # Walk the enclosed parts only to count them against the limits and record types.
    walk.parts += 1
    walk.part_types.append(_content_type(inner))


def _enclosed_headers(text: str, walk: _Walk) -> None:
    for line in text.splitlines()[:500]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        lowered = name.strip().lower()
        if lowered == "message-id":
            for item in message_ids(value):
                if item not in walk.enclosed_ids:
                    walk.enclosed_ids.append(item)
        elif lowered == "subject" and value.strip():
            walk.enclosed_subjects.append(decode_header_value(value.strip()))


# --- entry point --------------------------------------------------------------------------


_PART_HEADER = re.compile(rb"^content-type:", re.IGNORECASE | re.MULTILINE)


def _parse_message(raw: bytes, limits: ParseLimits, truncation: list[str]) -> Message:
    """Parse with ``policy.default``; ``compat32`` when it raises or the tree is huge.

    The stdlib parser builds every part before we can count them, and policy.default
    costs about ten times compat32 per part; a mail with thousands of parts is cut after
    twice the part limit and parsed with compat32, so its cost stays bounded.
    """
    many = 0
    for match in _PART_HEADER.finditer(raw):
        many += 1
        if many > limits.max_parts * 2:
            raw = raw[: match.start()]
            truncation.append("part count")
            return email.message_from_bytes(raw, policy=policy.compat32)
    if many > limits.max_parts // 2:
        return email.message_from_bytes(raw, policy=policy.compat32)
    try:
        return email.message_from_bytes(raw, policy=policy.default)
    except Exception:
        return email.message_from_bytes(raw, policy=policy.compat32)


def parse_mail(raw: bytes, *, limits: ParseLimits = DEFAULT_LIMITS) -> ParsedMail:
    """Parse one raw mail. Never raises on malformed input; caps every kind of work."""
    digest = hashlib.sha256(raw).hexdigest()
    truncation: list[str] = []
    size = len(raw)
    if size > limits.max_raw_bytes:
        raw = raw[: limits.max_raw_bytes]
        truncation.append("raw size")
    msg = _parse_message(raw, limits, truncation)
    raw_headers = _raw_headers(msg)
    headers: list[tuple[str, str]] = []
    for name, value in raw_headers[: limits.max_headers]:
        decoded = decode_header_value(value[: limits.max_header_chars * 2])
        if len(decoded) > limits.max_header_chars:
            decoded = decoded[: limits.max_header_chars]
            if "header length" not in truncation:
                truncation.append("header length")
        headers.append((name.strip().lower(), decoded))
    if len(raw_headers) > limits.max_headers:
        truncation.append("header count")

    senders = _addresses(msg, "from", raw_headers) or _addresses(msg, "sender", raw_headers)
    from_address = from_name = None
    for name, address in senders:
        cleaned = _clean_address(address)
        if cleaned:
            from_address, from_name = cleaned, _clean_name(name, cleaned)
            break
    if from_address is None and senders:
        from_name = _clean_name(senders[0][0], None)

    def address_list(header: str) -> tuple[str, ...]:
        found = (_clean_address(a) for _, a in _addresses(msg, header, raw_headers)[:100])
        return tuple(a for a in found if a)

    subject = _header_text(msg, "subject", raw_headers) or ""
    message_id = next(iter(message_ids(_header_text(msg, "message-id", raw_headers))), None)
    date: datetime | None = None
    date_text = _header_text(msg, "date", raw_headers)
    if date_text:
        try:
            date = email.utils.parsedate_to_datetime(date_text)
        except (TypeError, ValueError, IndexError, OverflowError):
            date = None

    walk = _Walk(limits)
    _walk(msg, walk, 0)
    text = "\n\n".join(t.strip("\n") for t in walk.texts)
    if len(text) > limits.max_text_chars:
        text = text[: limits.max_text_chars]
        walk.note("text length")
    truncation.extend(r for r in walk.truncation if r not in truncation)
    defects = [type(d).__name__ for d in getattr(msg, "defects", ())[:20]]
    defects.extend(d for d in walk.defects if d not in defects)

    return ParsedMail(
        from_address=from_address,
        from_name=from_name,
        to=address_list("to"),
        cc=address_list("cc"),
        reply_to=address_list("reply-to"),
        subject=_CONTROL.sub(" ", subject)[:1000],
        message_id=message_id,
        in_reply_to=message_ids(_header_text(msg, "in-reply-to", raw_headers)),
        references=message_ids(_header_text(msg, "references", raw_headers)),
        date=date,
        content_type=_content_type(msg),
        text=text,
        text_from_html=walk.text_from_html and len(walk.texts) == 1,
        attachments=tuple(walk.attachments),
        part_types=tuple(walk.part_types),
        headers=tuple(headers),
        report_type=walk.report_type,
        delivery_status=walk.delivery_status,
        feedback_report=walk.feedback_report,
        disposition_notification=walk.disposition,
        enclosed_message_ids=tuple(walk.enclosed_ids[:50]),
        enclosed_subjects=tuple(walk.enclosed_subjects[:10]),
        defects=tuple(defects),
        truncated=bool(truncation),
        truncation=tuple(truncation),
        dropped_attachments=walk.dropped_attachments,
        size=size,
        sha256=digest,
    )
