"""A visitor's own transcript, read back for the widget after a reload."""

from __future__ import annotations

from typing import Any

from bot.history import ConversationReader
from channels.webchat.convert import CHANNEL, safe_html, thread_key


class VisitorHistory:
    """Reads the non-private messages of the conversation bound to one visitor key."""

    def __init__(self, reader: ConversationReader, *, limit: int = 200) -> None:
        self.reader = reader
        self.limit = limit

    async def messages(self, visitor: str) -> list[dict[str, Any]]:
        rows = await self.reader.public_transcript(CHANNEL, thread_key(visitor), limit=self.limit)
        out: list[dict[str, Any]] = []
        prefix = f"{visitor}:"
        for message in rows:
            meta = message.meta or {}
            client_id = None
            if message.direction == "in" and (message.external_id or "").startswith(prefix):
                client_id = (message.external_id or "")[len(prefix) :]
            out.append(
                {
                    "message_id": message.message_id,
                    "direction": message.direction,
                    "author": message.author_kind,
                    "kind": message.kind,
                    "markdown": message.text,
                    "html": safe_html(message.text) if message.direction == "out" else None,
                    "buttons": [
                        {"label": str(b.get("label", "")), "value": str(b.get("value", ""))}
                        for b in meta.get("buttons") or []
                        if isinstance(b, dict)
                    ],
                    "quick_replies": [str(q) for q in meta.get("quick_replies") or []],
                    "client_id": client_id,
                    "at": message.at.isoformat(),
                }
            )
        return out
