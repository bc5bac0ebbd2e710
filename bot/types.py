"""Channel-neutral values that cross the boundary between a platform and the bot.

A channel adapter turns a platform event into one :class:`Inbound`; the bot answers with
:class:`Outbound` values that travel through the outbox. Only ``raw`` stays untyped.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class ChannelKind(enum.StrEnum):
    """Well-known channel names. A new channel may use any other short string."""

    TERMINAL = "terminal"
    MEMORY = "memory"
    SLACK = "slack"
    EMAIL = "email"
    WEBCHAT = "webchat"


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent an inbound message, as the channel knows them.

    ``external_id`` is the channel's stable id for the person (Slack user id, email
    address, web chat visitor key). ``email`` is set only when the channel *verified* it
    (Slack users.info, the envelope of an authenticated mailbox, a web chat identity
    hash); a typed address is never put here.
    """

    external_id: str
    display_name: str | None = None
    email: str | None = None
    email_verified: bool = False
    is_bot: bool = False


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file that came with a message; ``content`` is bounded by the channel."""

    filename: str
    content_type: str
    size: int
    content: bytes | None = None


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message from a person, in any channel.

    ``external_id`` is the platform's id for this message (Slack event id, IMAP
    mailbox/UIDVALIDITY/UID, the web chat client id); the pair (channel, external_id)
    is how a repeat is recognised. ``thread_key`` names the platform conversation the
    message belongs to (a Slack DM channel, a web chat visitor, an email thread);
    ``reply_to`` carries what the channel needs to answer in the same place.

    ``alt_ids`` are further keys that name the same message (an email's Message-ID and
    content hash, so a re-fetch under a new UIDVALIDITY is still recognised).
    ``references`` are platform ids of earlier messages this one answers (email
    In-Reply-To/References); the core threads on them only within the same person.
    ``ticket_hint`` is a ticket number the channel found (an ``[INC-000123]`` subject tag);
    it too only counts for that ticket's requester. ``kind`` lets a channel hand in
    something that must be stored but not answered ("auto_reply", "bounce"...).
    """

    channel: str
    external_id: str
    sender: Sender
    text: str
    thread_key: str
    received_at: datetime | None = None
    reply_to: Mapping[str, Any] = field(default_factory=dict)
    button: str | None = None
    ticket_hint: str | None = None
    alt_ids: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    kind: str = "message"
    attachments: tuple[Attachment, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)


def inbound_to_json(inbound: Inbound) -> dict[str, Any]:
    """A JSON-safe form of an Inbound for the durable inbox (attachment bytes dropped)."""
    return {
        "channel": inbound.channel,
        "external_id": inbound.external_id,
        "sender": {
            "external_id": inbound.sender.external_id,
            "display_name": inbound.sender.display_name,
            "email": inbound.sender.email,
            "email_verified": inbound.sender.email_verified,
            "is_bot": inbound.sender.is_bot,
        },
        "text": inbound.text,
        "thread_key": inbound.thread_key,
        "received_at": inbound.received_at.isoformat() if inbound.received_at else None,
        "reply_to": dict(inbound.reply_to),
        "button": inbound.button,
        "ticket_hint": inbound.ticket_hint,
        "alt_ids": list(inbound.alt_ids),
        "references": list(inbound.references),
        "kind": inbound.kind,
        "attachments": [
            {"filename": a.filename, "content_type": a.content_type, "size": a.size}
            for a in inbound.attachments
        ],
        "meta": dict(inbound.meta),
    }


def inbound_from_json(data: Mapping[str, Any]) -> Inbound:
    sender = data["sender"]
    received = data.get("received_at")
    return Inbound(
        channel=data["channel"],
        external_id=data["external_id"],
        sender=Sender(
            external_id=sender["external_id"],
            display_name=sender.get("display_name"),
            email=sender.get("email"),
            email_verified=bool(sender.get("email_verified")),
            is_bot=bool(sender.get("is_bot")),
        ),
        text=data.get("text", ""),
        thread_key=data["thread_key"],
        received_at=datetime.fromisoformat(received) if received else None,
        reply_to=dict(data.get("reply_to") or {}),
        button=data.get("button"),
        ticket_hint=data.get("ticket_hint"),
        alt_ids=tuple(data.get("alt_ids") or ()),
        references=tuple(data.get("references") or ()),
        kind=data.get("kind", "message"),
        attachments=tuple(
            Attachment(a["filename"], a["content_type"], int(a["size"]))
            for a in data.get("attachments") or ()
        ),
        meta=dict(data.get("meta") or {}),
    )


@dataclass(frozen=True, slots=True)
class Button:
    """A choice offered to the person; ``value`` comes back as ``Inbound.button``."""

    label: str
    value: str
    style: str | None = None


@dataclass(frozen=True, slots=True)
class Outbound:
    """One message from the bot or an agent to a person or an agent surface.

    ``address`` is channel-specific routing (a Slack channel and thread ts, an email
    recipient with threading headers, a web chat visitor key). ``markdown`` is the
    canonical text; each channel renders it its own way. ``automatic`` marks messages
    the bot sent on its own (email adds Auto-Submitted to them).
    """

    channel: str
    address: Mapping[str, Any]
    markdown: str
    buttons: tuple[Button, ...] = ()
    quick_replies: tuple[str, ...] = ()
    subject: str | None = None
    automatic: bool = True
    author: str = "bot"
    kind: str = "reply"
    outbox_id: int | None = None
    conversation_id: int | None = None
    ticket_number: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "address": dict(self.address),
            "markdown": self.markdown,
            "buttons": [
                {"label": b.label, "value": b.value, "style": b.style} for b in self.buttons
            ],
            "quick_replies": list(self.quick_replies),
            "subject": self.subject,
            "automatic": self.automatic,
            "author": self.author,
            "kind": self.kind,
            "conversation_id": self.conversation_id,
            "ticket_number": self.ticket_number,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, outbox_id: int | None = None) -> Outbound:
        return cls(
            channel=data["channel"],
            address=dict(data.get("address") or {}),
            markdown=data.get("markdown", ""),
            buttons=tuple(
                Button(label=b["label"], value=b["value"], style=b.get("style"))
                for b in data.get("buttons") or ()
            ),
            quick_replies=tuple(data.get("quick_replies") or ()),
            subject=data.get("subject"),
            automatic=bool(data.get("automatic", True)),
            author=data.get("author", "bot"),
            kind=data.get("kind", "reply"),
            outbox_id=outbox_id,
            conversation_id=data.get("conversation_id"),
            ticket_number=data.get("ticket_number"),
            meta=dict(data.get("meta") or {}),
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a channel reports after sending: the platform's id of what it sent."""

    platform_id: str
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HandleResult:
    """What :meth:`ConversationManager.handle` did with one inbound message."""

    duplicate: bool
    conversation_id: int | None = None
    message_id: int | None = None
    outbox_ids: tuple[int, ...] = ()
    kept_reason: str | None = None
    route: str | None = None
