"""Read-only views of conversations for channels that show a transcript (web chat)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.types import Outbound
from storage.db import Database
from storage.repositories import Conversations, Outbox


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    message_id: int
    direction: str
    author_kind: str
    kind: str
    text: str
    external_id: str | None
    at: datetime
    meta: dict[str, Any] = field(default_factory=dict)


class ConversationReader:
    """The public (non-private) messages of the conversation on one platform thread."""

    def __init__(self, database: Database) -> None:
        self.db = database

    async def public_transcript(
        self, channel: str, thread_key: str, *, limit: int = 200
    ) -> list[TranscriptEntry]:
        async with self.db.read() as session:
            repo = Conversations(session)
            conversation = await repo.by_thread(channel, thread_key)
            if conversation is None:
                return []
            rows = await repo.messages(conversation.id, include_private=False, limit=limit)
        return [
            TranscriptEntry(
                message_id=m.id,
                direction=m.direction,
                author_kind=m.author_kind,
                kind=m.kind,
                text=m.text,
                external_id=m.external_id,
                at=m.created_at,
                meta=dict(m.meta or {}),
            )
            for m in rows
        ]

    async def outbound(self, outbox_ids: Sequence[int]) -> dict[int, Outbound]:
        """The queued outbound messages with these outbox ids (what another node sent to
        a socket held here), in one query; ids that do not exist are left out."""
        async with self.db.read() as session:
            payloads = await Outbox(session).payloads(outbox_ids)
        return {
            row_id: Outbound.from_json(payload, outbox_id=row_id)
            for row_id, payload in payloads.items()
        }
