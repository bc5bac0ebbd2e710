"""Writing a reply: one stored message and one outbox row, in the caller's transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from bot.turn import Reply
from bot.types import Outbound
from storage.models import Conversation, Message, OutboxRow
from storage.repositories import Conversations, Outbox


async def enqueue_reply(
    session: AsyncSession,
    conversation: Conversation,
    reply: Reply,
    *,
    now: datetime,
    author_kind: str = "bot",
    author_id: int | None = None,
    automatic: bool = True,
    external_id: str | None = None,
) -> tuple[Message, OutboxRow]:
    """Store ``reply`` in the conversation and queue it to the person's channel."""
    message = await Conversations(session).add_message(
        conversation,
        direction="out",
        author_kind=author_kind,
        author_id=author_id,
        text=reply.markdown,
        kind=reply.kind,
        now=now,
        external_id=external_id,
        meta={
            "buttons": [{"label": b.label, "value": b.value} for b in reply.buttons],
            "quick_replies": list(reply.quick_replies),
            **reply.meta,
        },
    )
    outbound = Outbound(
        channel=conversation.channel,
        address=dict(conversation.reply_to),
        markdown=reply.markdown,
        buttons=reply.buttons,
        quick_replies=reply.quick_replies,
        subject=reply.subject,
        automatic=automatic,
        author=author_kind,
        kind=reply.kind,
        conversation_id=conversation.id,
        ticket_number=reply.ticket_number,
        meta={"message_id": message.id, **reply.meta},
    )
    row = await Outbox(session).enqueue(
        channel=conversation.channel,
        payload=outbound.to_json(),
        now=now,
        conversation_id=conversation.id,
        message_id=message.id,
    )
    return message, row
