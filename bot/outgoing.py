"""Writing replies: stored messages and outbox rows, in the caller's transaction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.turn import Reply
from bot.types import Outbound
from storage.models import Conversation
from storage.repositories import Conversations, MessageRow, Outbox, write_staged_rows


@dataclass(slots=True)
class _Staged:
    message: MessageRow
    payload: dict[str, Any]
    conversation_id: int
    channel: str


@dataclass(frozen=True, slots=True)
class WrittenReply:
    """A staged reply once written: its message and its outbox row."""

    message: MessageRow
    outbox_id: int
    channel: str
    payload: dict[str, Any]
    conversation_id: int
    claim: dict[str, Any] | None
    """The row's claim columns when it was inserted claimed (``write(claim=…)``)."""


class StagedReplies:
    """Messages and replies of several turns, written together: every staged message in
    one INSERT, then every reply's outbox row (which carries its message's id) in one
    more, without the ORM's per-object flush work.

    :meth:`stage` builds a turn's messages and fixes what each reply says and where it
    goes, so a later turn cannot change it; :meth:`flush` inserts what is staged so far
    (for a query that must see it); :meth:`write` flushes and queues the outbox rows.
    """

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self._messages: list[MessageRow] = []  # built, not yet inserted
        self._replies: list[_Staged] = []  # outbox rows to queue at write()
        self.people: set[int] = set()
        """Who has staged replies not yet inserted (the email loop guard counts them)."""

    def stage_message(self, conversation: Conversation, message: MessageRow) -> None:
        """Stage a message that needs no reply (stored, not answered)."""
        Conversations.touch(conversation, message)
        self._messages.append(message)

    def stage(
        self,
        conversation: Conversation,
        replies: Sequence[Reply],
        *,
        now: datetime,
        author_kind: str = "bot",
        author_id: int | None = None,
        automatic: bool = True,
        external_id: str | None = None,
        after: MessageRow | None = None,
    ) -> list[int]:
        """Stage ``replies`` in ``conversation``; their positions in :meth:`write`'s result.

        ``after`` is a built but unstored message that the replies answer (the inbound
        one): it is inserted ahead of them, so it gets the lower id.
        """
        if after is not None:
            self.stage_message(conversation, after)
        positions: list[int] = []
        for reply in replies:
            message = Conversations.new_message(
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
            self.stage_message(conversation, message)
            positions.append(len(self._replies))
            self._replies.append(
                _Staged(
                    message=message,
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
                        meta=dict(reply.meta),
                    ).to_json(),
                    conversation_id=conversation.id,
                    channel=conversation.channel,
                )
            )
        if replies:
            self.people.add(conversation.person_id)
        return positions

    async def flush(self) -> None:
        """Flush the session, write the rows kept for later (ticket events, refused
        questions) and insert the messages staged so far (they get their ids)."""
        await self.session.flush()
        await write_staged_rows(self.session)
        messages, self._messages = self._messages, []
        await Conversations(self.session).insert_messages(messages)
        self.people.clear()

    async def write(
        self,
        *,
        now: datetime,
        claim: Callable[[str, datetime], dict[str, Any] | None] | None = None,
    ) -> list[WrittenReply]:
        """Flush, then queue one outbox row per staged reply, in staging order.

        With ``claim`` (the dispatcher's ``claim_on_insert``) a row goes in claimed when
        it returns its claim columns, for the dispatcher to be handed after the commit
        instead of claiming it."""
        await self.flush()
        staged, self._replies = self._replies, []
        rows = []
        claims: list[dict[str, Any] | None] = []
        for item in staged:
            item.payload["meta"] = {"message_id": item.message.id, **item.payload["meta"]}
            row = Outbox.row(
                channel=item.channel,
                payload=item.payload,
                now=now,
                conversation_id=item.conversation_id,
                message_id=item.message.id,
            )
            claimed = claim(item.channel, now) if claim is not None else None
            if claimed is not None:
                row.update(claimed)
            claims.append(claimed)
            rows.append(row)
        ids = await Outbox(self.session).insert_many(rows)
        return [
            WrittenReply(
                message=item.message,
                outbox_id=row_id,
                channel=item.channel,
                payload=item.payload,
                conversation_id=item.conversation_id,
                claim=claimed,
            )
            for item, row_id, claimed in zip(staged, ids, claims, strict=True)
        ]


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
) -> tuple[MessageRow, int]:
    """Store ``reply`` in the conversation and queue it to the person's channel: the
    message and its outbox row's id."""
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
    after: MessageRow | None = None,
) -> list[tuple[MessageRow, int]]:
    """Store ``replies`` and queue each to the person's channel, in order: two INSERTs
    (messages, then outbox rows), however many replies there are."""
    staged = StagedReplies(session)
    staged.stage(
        conversation,
        replies,
        now=now,
        author_kind=author_kind,
        author_id=author_id,
        automatic=automatic,
        external_id=external_id,
        after=after,
    )
    return [(w.message, w.outbox_id) for w in await staged.write(now=now)]
