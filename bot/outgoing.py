"""Writing replies: stored messages and outbox rows, in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
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
    [written] = await enqueue_replies(
        session,
        conversation,
        [reply],
        now=now,
        author_kind=author_kind,
        author_id=author_id,
        automatic=automatic,
        external_id=external_id,
    )
    return written


async def enqueue_replies(
    session: AsyncSession,
    conversation: Conversation,
    replies: Sequence[Reply],
    *,
    now: datetime,
    author_kind: str = "bot",
    author_id: int | None = None,
    automatic: bool = True,
    external_id: str | None = None,
    after: Message | None = None,
) -> list[tuple[Message, OutboxRow]]:
    """Store ``replies`` and queue each to the person's channel, in order.

    However many replies there are, this is two INSERTs (messages, then outbox rows that
    carry the message ids). ``after`` is a built but unstored message that the replies
    answer (the inbound one): it goes into the same INSERT, ahead of them.
    """
    conversations = Conversations(session)
    messages = [
        await conversations.add_message(
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
            defer=True,
        )
        for reply in replies
    ]
    pending = [after, *messages] if after is not None else messages
    for message in pending:
        Conversations.touch(conversation, message)
    session.add_all(pending)
    await session.flush()
    rows = [
        Outbox.build(
            channel=conversation.channel,
            payload=Outbound(
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
            ).to_json(),
            now=now,
            conversation_id=conversation.id,
            message_id=message.id,
        )
        for reply, message in zip(replies, messages, strict=True)
    ]
    session.add_all(rows)
    await session.flush()
    return list(zip(messages, rows, strict=True))
