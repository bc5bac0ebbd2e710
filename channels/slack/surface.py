"""The Slack triage channel as an agent surface.

The conversation manager calls :meth:`SlackTriageSurface.escalated` and
:meth:`SlackTriageSurface.relay` inside its transaction. An escalation becomes an
escalation card in the triage channel; the card's outbox row is enqueued here (through
the callable the composition root hands in) so that its id can be noted in
``conversation.notes["slack_card_outbox"]`` in the same transaction. A requester's
message while an agent owns the conversation becomes a reply in the card's thread; the
card's ``ts`` is looked up when that reply is sent (the card may not be delivered yet).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bot.types import Outbound
from channels.slack.convert import CHANNEL

# The manager hands in its session and ORM rows; this module only reads their attributes
# (a channel imports nothing of storage), hence ``Any`` for those four.
AsyncSession = Any
Conversation = Any
Message = Any
Person = Any

CARD_KIND = "slack_card"
RELAY_KIND = "slack_relay"
CARD_NOTE = "slack_card_outbox"

CHANNEL_NAMES = {"slack": "Slack", "email": "email", "webchat": "web chat", "memory": "memory"}


@dataclass(frozen=True, slots=True)
class CardFacts:
    """What the composition root reads for a card, inside the manager's transaction."""

    ticket_number: str | None
    priority: str
    priority_reason: str
    summary: str


CardFactsLoader = Callable[[AsyncSession, Conversation], Awaitable[CardFacts]]
OutboundEnqueuer = Callable[[AsyncSession, Outbound], Awaitable[int]]


class SlackTriageSurface:
    """Escalation cards and relayed requester messages in ``triage_channel``."""

    def __init__(
        self,
        triage_channel: str,
        *,
        card_facts: CardFactsLoader,
        enqueue: OutboundEnqueuer,
    ) -> None:
        self.triage_channel = triage_channel
        self._card_facts = card_facts
        self._enqueue = enqueue

    async def escalated(
        self, session: AsyncSession, conversation: Conversation, person: Person, reason: str
    ) -> list[Outbound]:
        notes = dict(conversation.notes or {})
        if notes.get(CARD_NOTE):
            # the conversation already has a card (escalated again after a hand back):
            # its thread stays the one place agents work it
            return []
        facts = await self._card_facts(session, conversation)
        card = card_fields(conversation, person, facts, reason=reason)
        outbound = Outbound(
            channel=CHANNEL,
            address={"channel": self.triage_channel},
            markdown=card["summary"],
            kind=CARD_KIND,
            author="system",
            conversation_id=conversation.id,
            ticket_number=facts.ticket_number,
            meta={"card": card},
        )
        outbox_id = await self._enqueue(session, outbound)
        notes[CARD_NOTE] = outbox_id
        conversation.notes = notes
        return []

    async def relay(
        self, session: AsyncSession, conversation: Conversation, person: Person, message: Message
    ) -> list[Outbound]:
        card_outbox = (conversation.notes or {}).get(CARD_NOTE)
        if not card_outbox or message.private:
            return []
        name = person.display_name or person.email or f"person {person.id}"
        return [
            Outbound(
                channel=CHANNEL,
                address={"channel": self.triage_channel, "card_outbox": int(card_outbox)},
                # the requester's words: rendered as untrusted text (escaped, no links)
                markdown=f"{name}: {message.text}",
                author="person",
                kind=RELAY_KIND,
                conversation_id=conversation.id,
                meta={"message_id": message.id},
            )
        ]


def card_fields(
    conversation: Conversation, person: Person, facts: CardFacts, *, reason: str
) -> dict[str, Any]:
    """The keyword arguments of :func:`channels.slack.convert.escalation_card` (JSON-safe)."""
    notes: Mapping[str, Any] = conversation.notes or {}
    tried: list[str] = []
    for article in notes.get("offered_articles", []):
        rejected = article in notes.get("rejected_articles", [])
        tried.append(f"KB article {article}" + (" (did not help)" if rejected else ""))
    if notes.get("frustration"):
        tried.append(f"offered a human: the person {notes['frustration']}")
    tried.append(f"escalated: {reason}")
    return {
        "conversation_id": conversation.id,
        "ticket_number": facts.ticket_number or f"Conversation {conversation.id}",
        "requester_name": person.display_name or person.email or f"person {person.id}",
        "requester_email": person.email,
        "requester_channel": CHANNEL_NAMES.get(conversation.channel, conversation.channel),
        "priority": facts.priority,
        "priority_reason": facts.priority_reason or reason,
        "summary": facts.summary or reason,
        "bot_tried": tried,
    }
