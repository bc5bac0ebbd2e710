"""Message-IDs we mint and reply tokens we sign, so replies thread only when we said so.

- :func:`mint_message_id` is deterministic per outbox row (a resend after an ambiguous
  SMTP failure reuses it, so the recipient's client and our own ingest de-duplicate) and
  carries an HMAC, so :func:`verify_reference` recognises our ids without a lookup.
- :func:`mint_reply_token` signs a conversation id; it travels in the Message-ID and in
  the ``Reply-To`` plus-address (``desk+c-1f-<sig>@example.com``). Inbound mail threads by a
  verified token first; an In-Reply-To that merely *names* a conversation is never trusted
  without the signature (R29).

Every comparison is constant-time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable

_PREFIX = "deskbot"
_SIG_CHARS = 16
_TOKEN_SIG_CHARS = 13
_MSGID = re.compile(
    rf"^<?{_PREFIX}\.([0-9a-z]{{1,13}})\.([0-9a-z]{{1,13}})\.([a-z2-7]{{{_SIG_CHARS}}})@[^<>\s@]+>?$"
)
_TOKEN = re.compile(rf"^c-([0-9a-z]{{1,13}})-([a-z2-7]{{{_TOKEN_SIG_CHARS}}})$")


def _key(secret: str | bytes, purpose: str) -> bytes:
    raw = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not raw:
        raise ValueError("an empty secret cannot sign anything")
    return hmac.new(raw, f"deskbot-email:{purpose}".encode(), hashlib.sha256).digest()


def _sign(secret: str | bytes, purpose: str, message: str, length: int) -> str:
    digest = hmac.new(_key(secret, purpose), message.encode(), hashlib.sha256).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:length]


def _base36(number: int) -> str:
    if number < 0:
        raise ValueError("ids are non-negative")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


def mint_message_id(
    outbox_id: int, *, secret: str | bytes, domain: str, conversation_id: int | None = None
) -> str:
    """``<deskbot.<outbox>.<conversation>.<sig>@domain>``; the same row gives the same id."""
    conversation = conversation_id or 0
    body = f"{_base36(outbox_id)}.{_base36(conversation)}"
    signature = _sign(secret, "message-id", body, _SIG_CHARS)
    domain = re.sub(r"[^A-Za-z0-9.\-]", "", domain) or "localhost"
    return f"<{_PREFIX}.{body}.{signature}@{domain}>"


def _parse_message_id(message_id: str, secret: str | bytes) -> tuple[int, int] | None:
    match = _MSGID.match(message_id.strip().lower())
    if match is None:
        return None
    outbox36, conversation36, signature = match.groups()
    expected = _sign(secret, "message-id", f"{outbox36}.{conversation36}", _SIG_CHARS)
    if not hmac.compare_digest(expected, signature):
        return None
    return int(outbox36, 36), int(conversation36, 36)


def verify_reference(message_id: str, *, secret: str | bytes) -> int | None:
    """The outbox id of a Message-ID we minted with a valid signature, else None."""
    parsed = _parse_message_id(message_id, secret)
    return parsed[0] if parsed else None


def conversation_of_reference(message_id: str, *, secret: str | bytes) -> int | None:
    """The conversation id signed into one of our Message-IDs (None when absent/invalid)."""
    parsed = _parse_message_id(message_id, secret)
    return parsed[1] or None if parsed else None


def mint_reply_token(conversation_id: int, *, secret: str | bytes) -> str:
    """A token safe in an address local part: ``c-<conversation>-<sig>``."""
    body = _base36(conversation_id)
    return f"c-{body}-{_sign(secret, 'reply-token', body, _TOKEN_SIG_CHARS)}"


def verify_reply_token(token: str, *, secret: str | bytes) -> int | None:
    """The conversation id of a valid reply token, else None."""
    match = _TOKEN.match(token.strip().lower())
    if match is None:
        return None
    body, signature = match.groups()
    expected = _sign(secret, "reply-token", body, _TOKEN_SIG_CHARS)
    if not hmac.compare_digest(expected, signature):
        return None
    return int(body, 36)


def reply_address(desk_address: str, conversation_id: int, *, secret: str | bytes) -> str:
    """The desk address with the signed token as plus-address: ``desk+TOKEN@domain``."""
    local, _, domain = desk_address.partition("@")
    local = local.split("+", 1)[0]
    return f"{local}+{mint_reply_token(conversation_id, secret=secret)}@{domain}"


def conversation_from_addresses(addresses: Iterable[str], *, secret: str | bytes) -> int | None:
    """The conversation of the first recipient address carrying a valid reply token."""
    for address in addresses:
        local = address.partition("@")[0]
        if "+" in local:
            found = verify_reply_token(local.split("+", 1)[1], secret=secret)
            if found is not None:
                return found
    return None
