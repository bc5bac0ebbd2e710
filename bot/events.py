"""In-process publish/subscribe of conversation events for live agent surfaces.

The console's WebSocket and the web chat channel subscribe; the manager and the
agent desk publish after their transaction commits, so a subscriber never sees a change
that was rolled back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConversationEvent:
    """Something happened in a conversation: a message, a state change, an alert."""

    kind: str  # message | state | alert | queue
    conversation_id: int | None
    data: dict[str, Any] = field(default_factory=dict)


class EventBus:
    """Fan-out to bounded subscriber queues; a slow subscriber drops, never blocks."""

    def __init__(self, *, queue_size: int = 1000) -> None:
        self._subscribers: set[asyncio.Queue[ConversationEvent]] = set()
        self._queue_size = queue_size

    def publish(self, event: ConversationEvent) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                logger.warning("events.subscriber.overflow kind=%s", event.kind)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[ConversationEvent]]:
        queue: asyncio.Queue[ConversationEvent] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)
