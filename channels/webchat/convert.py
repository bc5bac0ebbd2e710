"""Pure conversions for the web chat: frames ↔ values, safe HTML, signed visitor tokens.

No I/O here. HTML is rendered from Markdown with raw HTML escaped and only ``http``,
``https``, ``mailto`` and relative link targets kept, so nothing a person or an article
writes can become markup that runs in the widget or the console.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer
from markdown_it import MarkdownIt

from channels.base import Inbound, Outbound, Sender

CHANNEL = "webchat"
_SAFE_SCHEMES = ("http:", "https:", "mailto:")
_VISITOR_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _link_allowed(url: str) -> bool:
    target = url.strip().lower()
    head = target.split("/", 1)[0]
    if ":" not in head:
        return True  # relative target or a fragment
    return target.startswith(_SAFE_SCHEMES)


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False})
    md.validateLink = _link_allowed  # type: ignore[method-assign]
    renderer: Any = md.renderer  # RendererHTML; the protocol type does not list its rules
    default_link_open = renderer.rules.get("link_open")

    def link_open(tokens: Any, idx: int, options: Any, env: Any) -> str:
        tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
        tokens[idx].attrSet("target", "_blank")
        if default_link_open is not None:
            return str(default_link_open(tokens, idx, options, env))
        return str(renderer.renderToken(tokens, idx, options, env))

    renderer.rules["link_open"] = link_open
    return md


_MD = _markdown()


@functools.lru_cache(maxsize=2048)
def safe_html(markdown: str) -> str:
    """Markdown → HTML that is safe to insert: raw HTML escaped, unsafe links dropped.

    Cached: the same knowledge-base answers and bot prompts are rendered over and over,
    and rendering is pure (the output depends on the text only).
    """
    return _MD.render(markdown)


def new_visitor_key() -> str:
    return secrets.token_urlsafe(24)


def valid_visitor_key(value: str | None) -> bool:
    return bool(value) and _VISITOR_RE.match(value or "") is not None


def valid_client_id(value: object) -> bool:
    return isinstance(value, str) and _CLIENT_ID_RE.match(value) is not None


def identity_hash(secret: str, email: str) -> str:
    """What the host site computes server-side: HMAC-SHA256(secret, email) in hex."""
    normalized = email.strip().lower()
    return hmac.new(secret.encode(), normalized.encode(), hashlib.sha256).hexdigest()


def verify_identity(secret: str | None, email: str | None, given_hash: str | None) -> str | None:
    """The verified, normalised email, or ``None`` (no secret, no hash, wrong hash)."""
    if not secret or not email or not given_hash or "@" not in email or len(email) > 320:
        return None
    expected = identity_hash(secret, email)
    if hmac.compare_digest(expected, given_hash.strip().lower()):
        return email.strip().lower()
    return None


@dataclass(frozen=True, slots=True)
class VisitorSession:
    """What a signed visitor token carries: the key and, when verified, the email."""

    visitor: str
    email: str | None = None


class VisitorTokens:
    """Signs and checks visitor tokens (itsdangerous, keyed with the deskbot secret)."""

    def __init__(self, secret_key: str) -> None:
        self._serializer = URLSafeSerializer(secret_key, salt="deskbot.webchat.visitor")

    def issue(self, session: VisitorSession) -> str:
        return self._serializer.dumps({"v": session.visitor, "e": session.email})

    def check(self, token: str | None, visitor: str | None) -> VisitorSession | None:
        """The session when ``token`` is genuine and names ``visitor``; else ``None``."""
        if not token or not valid_visitor_key(visitor):
            return None
        try:
            data = self._serializer.loads(token)
        except BadSignature:
            return None
        if not isinstance(data, dict) or data.get("v") != visitor:
            return None
        email = data.get("e")
        return VisitorSession(visitor=str(visitor), email=email if isinstance(email, str) else None)


def thread_key(visitor: str) -> str:
    return f"visitor:{visitor}"


def inbound_from_frame(
    frame: dict[str, Any], session: VisitorSession, *, received_at: datetime | None = None
) -> Inbound:
    """One client ``message`` frame (already validated) → :class:`Inbound`."""
    button = frame.get("button")
    text = frame.get("text")
    body = text if isinstance(text, str) else ""
    if isinstance(button, str) and not body:
        body = button
    return Inbound(
        channel=CHANNEL,
        external_id=f"{session.visitor}:{frame['client_id']}",
        sender=Sender(
            external_id=session.visitor,
            email=session.email,
            email_verified=session.email is not None,
        ),
        text=body,
        thread_key=thread_key(session.visitor),
        received_at=received_at,
        reply_to={"visitor": session.visitor},
        button=button if isinstance(button, str) else None,
    )


def outbound_frame(outbound: Outbound) -> dict[str, Any]:
    """The JSON frame the widget renders for one outbound message."""
    return {
        "type": "message",
        "id": outbound.outbox_id,
        "message_id": outbound.meta.get("message_id"),
        "author": outbound.author,
        "kind": outbound.kind,
        "markdown": outbound.markdown,
        "html": safe_html(outbound.markdown),
        "buttons": [{"label": b.label, "value": b.value} for b in outbound.buttons],
        "quick_replies": list(outbound.quick_replies),
        "ticket_number": outbound.ticket_number,
    }
