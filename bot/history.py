"""Read-only views of conversations for channels that show a transcript (web chat)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from storage.db import Database
from storage.repositories import Conversations


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
