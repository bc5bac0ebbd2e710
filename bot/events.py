"""Publish/subscribe of conversation events for live agent surfaces, on one node or many.

The console's WebSocket and the web chat channel subscribe; the manager and the
agent desk publish after their transaction commits, so a subscriber never sees a change
that was rolled back.

On one process that is all there is. When several processes share one PostgreSQL, the
composition root links the bus to the others (:class:`bot.cluster.ClusterEvents`): what
is published here is also delivered to the other nodes' *cluster* subscribers, and what
they publish arrives here. A subscriber chooses:

- ``subscribe()``: this node's events only. For subscribers that act on the outside
  world once per event (the Slack card follows a claim made on this node), since every
  node would otherwise act on the same event.
- ``subscribe(cluster=True)``: this node's events, the other nodes' (``origin`` set),
  and ``resync`` when some may have been missed (the link to the others was down): the
  subscriber then re-reads what it shows from the database.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger(__name__)

RESYNC = "resync"
"""The kind of the event that tells cluster subscribers to re-read from the database."""


@dataclass(frozen=True, slots=True)
class ConversationEvent:
    """Something happened in a conversation: a message, a state change, an alert."""

    kind: str  # message | state | alert | queue | delivered | ... | resync
    conversation_id: int | None
    data: dict[str, Any] = field(default_factory=dict)
    origin: str | None = None
    """The node that published it, when that was another process; ``None`` for ours."""


class EventLink(Protocol):
    """How a bus reaches the other nodes (implemented by :class:`bot.cluster.ClusterEvents`)."""

    def forward(self, event: ConversationEvent) -> None:
        """Send to the other nodes soon, best effort, in publish order."""

    async def announce(self, event: ConversationEvent) -> None:
        """Send to the other nodes now; raise :class:`bot.errors.TransientError` (or
        ``RateLimited``) when that cannot be done."""


@dataclass(eq=False, slots=True)
class _Subscription:
    queue: asyncio.Queue[ConversationEvent]
    cluster: bool
    kinds: frozenset[str] | None


class EventBus:
    """Fan-out to bounded subscriber queues; a slow subscriber drops, never blocks."""

    def __init__(self, *, queue_size: int = 1000, node_id: str | None = None) -> None:
        self._subscribers: set[_Subscription] = set()
        self._queue_size = queue_size
        self.node_id = node_id or uuid.uuid4().hex[:16]
        """This process's name in the cluster (random per start)."""
        self._link: EventLink | None = None

    @property
    def clustered(self) -> bool:
        """Linked to other nodes (PostgreSQL LISTEN/NOTIFY is up and running)."""
        return self._link is not None

    def link(self, link: EventLink | None) -> None:
        """Attach (or, with ``None``, detach) the way to the other nodes."""
        self._link = link

    def publish(self, event: ConversationEvent) -> None:
        """Deliver to this node's subscribers and, when linked, to the other nodes."""
        self._fan_out(event, remote=False)
        if self._link is not None:
            self._link.forward(event)

    async def announce(self, event: ConversationEvent) -> None:
        """Deliver to the other nodes only, and return once they are told (a no-op on a
        single node). For a node that already served its own part (the web chat pushed
        a reply to the sockets it holds) and must know that the others were reached."""
        if self._link is not None:
            await self._link.announce(event)

    def receive(self, event: ConversationEvent) -> None:
        """An event from another node (or ``resync``): to cluster subscribers only."""
        self._fan_out(event, remote=True)

    def resync(self, reason: str) -> None:
        """Tell cluster subscribers that events from other nodes may have been missed."""
        logger.info("events.resync reason=%s", reason)
        self.receive(ConversationEvent(RESYNC, None, {"reason": reason}))

    def _fan_out(self, event: ConversationEvent, *, remote: bool) -> None:
        for subscription in list(self._subscribers):
            if remote and not subscription.cluster:
                continue
            if subscription.kinds is not None and event.kind not in subscription.kinds:
                continue
            try:
                subscription.queue.put_nowait(event)
            except asyncio.QueueFull:
                logger.warning("events.subscriber.overflow kind=%s", event.kind)

    @asynccontextmanager
    async def subscribe(
        self, *, cluster: bool = False, kinds: Collection[str] | None = None
    ) -> AsyncIterator[asyncio.Queue[ConversationEvent]]:
        """A queue of events: this node's, and with ``cluster`` the other nodes' and
        ``resync``; only of ``kinds`` when given (so unrelated events never fill it)."""
        queue: asyncio.Queue[ConversationEvent] = asyncio.Queue(self._queue_size)
        subscription = _Subscription(
            queue, cluster, frozenset(kinds) if kinds is not None else None
        )
        self._subscribers.add(subscription)
        try:
            yield queue
        finally:
            self._subscribers.discard(subscription)
