"""Conversation events across the nodes that share one PostgreSQL database.

:class:`ClusterEvents` links this node's :class:`~bot.events.EventBus` to the others
through PostgreSQL LISTEN/NOTIFY on the ``deskbot_events`` channel (one dedicated
connection per node, :mod:`storage.notify`). The events published in one turn of the
event loop travel together, as one small JSON notification (several when they do not
fit in one)::

    {"n": "<node id>", "s": 42, "e": [["message", 17, {"message_id": 311}], ...]}

``n`` lets a node skip its own echo (by the payload's first bytes, without parsing it);
``s`` numbers a node's notifications 1, 2, 3…, so a receiver that sees a number skipped
knows it missed something (a notification dropped or lost in a failed send) and
resyncs, and one it has seen already is a duplicate and is skipped. A notification
with one event in ``"k"``, ``"c"``, ``"d"`` (the previous release's form) is read too.
Events carry ids, never message text: a subscriber that needs the text reads it from
the database (PostgreSQL refuses payloads of 8000 bytes or more).

When the listen connection drops, notifications sent meanwhile are lost: after the
reconnect the bus tells its cluster subscribers to ``resync`` (the console reloads its
queue, web chat sockets re-read their history).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson

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
        self._forwarded: list[ConversationEvent] = []  # published this turn of the loop
        self._own_prefix = orjson.dumps({"n": bus.node_id}).decode()[:-1] + ","

    async def start(self) -> None:
        await self.notifications.start()
        self.bus.link(self)
        logger.info("cluster.events.started node=%s", self.bus.node_id)

    async def stop(self) -> None:
        self.bus.link(None)
        await self.notifications.stop()

    # outgoing ------------------------------------------------------------------------------

    def forward(self, event: ConversationEvent) -> None:
        if not self._forwarded:
            asyncio.get_running_loop().call_soon(self._send_forwarded)
        self._forwarded.append(event)

    def _send_forwarded(self) -> None:
        events, self._forwarded = self._forwarded, []
        for payload in self._encode(events):
            self.notifications.notify_soon(payload)

    async def announce(self, event: ConversationEvent) -> None:
        if not self.notifications.listening.is_set():
            # the link is being re-established: hold this kind of delivery briefly,
            # without counting it as a failed attempt
            raise RateLimited("not connected to the other nodes", retry_after=1.0)
        self._send_forwarded()  # what was published before goes before it
        try:
            for payload in self._encode([event]):
                await self.notifications.notify(payload)
        except (NotifyUnavailable, TimeoutError) as exc:
            raise TransientError(
                f"could not notify the other nodes: {exc}", retry_after=1.0
            ) from exc

    def _encode(self, events: Sequence[ConversationEvent]) -> list[str]:
        """The notifications that carry ``events`` (none: a heartbeat that only carries
        the sequence number), each under PostgreSQL's payload limit."""
        budget = NOTIFY_PAYLOAD_LIMIT - 100  # room for the node id and the number
        payloads: list[str] = []
        parts: list[str] = []
        size = 0
        for event in events:
            part = orjson.dumps(
                [event.kind, event.conversation_id, event.data],
                default=str,
                option=orjson.OPT_NON_STR_KEYS,
            ).decode()
            length = len(part.encode())
            if length > budget:
                # the subscriber still learns that the conversation changed and re-reads it
                logger.warning("cluster.event.too_large kind=%s", event.kind)
                part = orjson.dumps(
                    [event.kind, event.conversation_id, {"truncated": True}]
                ).decode()
                length = len(part.encode())
            if parts and size + length + 1 > budget:
                payloads.append(self._wrap(parts))
                parts, size = [], 0
            parts.append(part)
            size += length + 1
        if parts or not events:
            payloads.append(self._wrap(parts))
        return payloads

    def _wrap(self, parts: list[str]) -> str:
        events = f',"e":[{",".join(parts)}]' if parts else ""
        return f'{self._own_prefix}"s":{next(self._sequence)}{events}}}'

    # incoming ------------------------------------------------------------------------------

    def _received(self, payload: str) -> None:
        if payload.startswith(self._own_prefix):
            return  # our own echo
        try:
            body = orjson.loads(payload)
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
        events = body.get("e")
        if events is None and "k" in body:  # one event, as the previous release sent it
            events = [[body.get("k"), body.get("c"), body.get("d")]]
        for entry in events if isinstance(events, list) else ():  # none: a heartbeat
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)):
                logger.warning("cluster.event.unreadable")
                continue
            kind, conversation, data = entry
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
        for payload in self._encode([]):
            self.notifications.notify_soon(payload)


__all__ = ["CHANNEL", "ClusterEvents"]
