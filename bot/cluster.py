"""Conversation events across the nodes that share one PostgreSQL database.

:class:`ClusterEvents` links this node's :class:`~bot.events.EventBus` to the others
through PostgreSQL LISTEN/NOTIFY on the ``deskbot_events`` channel (one dedicated
connection per node, :mod:`storage.notify`). Each event becomes a small JSON
notification::

    {"n": "<node id>", "s": 42, "k": "message", "c": 17, "d": {"message_id": 311}}

``n`` lets a node skip its own echo; ``s`` numbers a node's notifications 1, 2, 3…, so a
receiver that sees a number skipped knows it missed something (a notification dropped
or lost in a failed send) and resyncs, and one it has seen already is a duplicate and is
skipped. Events carry ids, never message text: a subscriber that needs the text reads it
from the database (PostgreSQL refuses payloads of 8000 bytes or more).

When the listen connection drops, notifications sent meanwhile are lost: after the
reconnect the bus tells its cluster subscribers to ``resync`` (the console reloads its
queue, web chat sockets re-read their history).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import OrderedDict
from typing import Any

from bot.errors import RateLimited, TransientError
from bot.events import ConversationEvent, EventBus
from storage.notify import NOTIFY_PAYLOAD_LIMIT, NotifyUnavailable, PostgresNotifications

logger = logging.getLogger(__name__)

CHANNEL = "deskbot_events"
_KNOWN_NODES = 1024


class ClusterEvents:
    """The bridge between this node's event bus and the other nodes' (start/stop)."""

    def __init__(
        self,
        bus: EventBus,
        database_url: str,
        *,
        channel: str = CHANNEL,
        **notify_options: Any,
    ) -> None:
        self.bus = bus
        self.notifications = PostgresNotifications(
            database_url,
            channel,
            on_payload=self._received,
            on_reconnected=self._reconnected,
            **notify_options,
        )
        self._sequence = itertools.count(1)
        self._last_seen: OrderedDict[str, int] = OrderedDict()

    async def start(self) -> None:
        await self.notifications.start()
        self.bus.link(self)
        logger.info("cluster.events.started node=%s", self.bus.node_id)

    async def stop(self) -> None:
        self.bus.link(None)
        await self.notifications.stop()

    # outgoing ------------------------------------------------------------------------------

    def forward(self, event: ConversationEvent) -> None:
        self.notifications.notify_soon(self._encode(event))

    async def announce(self, event: ConversationEvent) -> None:
        if not self.notifications.listening.is_set():
            # the link is being re-established: hold this kind of delivery briefly,
            # without counting it as a failed attempt
            raise RateLimited("not connected to the other nodes", retry_after=1.0)
        try:
            await self.notifications.notify(self._encode(event))
        except (NotifyUnavailable, TimeoutError) as exc:
            raise TransientError(
                f"could not notify the other nodes: {exc}", retry_after=1.0
            ) from exc

    def _encode(self, event: ConversationEvent | None) -> str:
        body: dict[str, Any] = {"n": self.bus.node_id, "s": next(self._sequence)}
        if event is not None:  # None: a heartbeat that only carries the sequence number
            body.update(k=event.kind, c=event.conversation_id, d=event.data)
        payload = json.dumps(body, separators=(",", ":"), default=str)
        if len(payload.encode()) > NOTIFY_PAYLOAD_LIMIT:
            # the subscriber still learns that the conversation changed and re-reads it
            logger.warning("cluster.event.too_large kind=%s", body.get("k"))
            body["d"] = {"truncated": True}
            payload = json.dumps(body, separators=(",", ":"), default=str)
        return payload

    # incoming ------------------------------------------------------------------------------

    def _received(self, payload: str) -> None:
        try:
            body = json.loads(payload)
            node = str(body["n"])
            sequence = int(body["s"])
        except (ValueError, KeyError, TypeError):
            logger.warning("cluster.event.unreadable")
            return
        if node == self.bus.node_id:
            return  # our own echo
        last = self._last_seen.get(node)
        if last is not None and sequence <= last:
            return  # delivered twice (a send retried after a broken connection)
        self._last_seen[node] = sequence
        self._last_seen.move_to_end(node)
        while len(self._last_seen) > _KNOWN_NODES:
            self._last_seen.popitem(last=False)
        if last is not None and sequence > last + 1:
            logger.warning("cluster.event.gap node=%s missed=%d", node, sequence - last - 1)
            self.bus.resync("gap")
        kind = body.get("k")
        if not isinstance(kind, str):
            return  # a heartbeat
        conversation = body.get("c")
        data = body.get("d")
        self.bus.receive(
            ConversationEvent(
                kind,
                conversation if isinstance(conversation, int) else None,
                data if isinstance(data, dict) else {},
                origin=node,
            )
        )

    def _reconnected(self) -> None:
        self.bus.resync("reconnected")
        # our numbering goes on: anyone who missed some of ours sees the gap at once
        self.notifications.notify_soon(self._encode(None))


__all__ = ["CHANNEL", "ClusterEvents"]
