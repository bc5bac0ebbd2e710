"""The web chat channel: live WebSocket connections per visitor, and ``send`` to them.

A visitor's sockets live on the node they connected to; the outbox dispatcher of any
node may send the reply. ``send_batch`` (the dispatcher hands it a batch's web chat
rows) therefore first tells the other nodes (one ``webchat.outbound`` event naming up to
``ANNOUNCE_CHUNK`` outbox ids with their visitor keys, through the event bus's cluster
link), then pushes the frames to the sockets held here. A node that holds one of those
visitors' sockets reads the outbound messages from the database by their outbox ids and
pushes the same frames. Each open socket gets each reply once; the widget also drops a
frame whose message id it has already shown.

What "sent" means for a web chat outbox row: the message is in the conversation's
history (it was committed with the outbox row), it was pushed to the sockets of this node,
and every node listening at that moment was told. A node whose listen connection was down
misses the notice and, once reconnected, tells its sockets to re-read their history
(``resync``). A visitor with no open socket anywhere finds the reply in the history when
the widget reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import orjson

from bot.events import RESYNC, ConversationEvent, EventBus
from channels.base import Delivery, Outbound
from channels.webchat.convert import CHANNEL, outbound_frame

logger = logging.getLogger(__name__)

PEER_OUTBOUND = "webchat.outbound"
"""The event by which a node tells the others to push an outbound message to a visitor."""

ANNOUNCE_CHUNK = 100
"""Sends named in one notice to the other nodes (an id and a visitor key each: well
under PostgreSQL's 8000-byte payload limit)."""

OutboundLoader = Callable[[Sequence[int]], Awaitable[dict[int, Outbound]]]
"""Reads queued outbound messages by outbox id (``ConversationReader.outbound``)."""


class FrameSink(Protocol):
    """One open socket, as far as the channel needs it (a Starlette WebSocket fits)."""

    async def send_text(self, data: str) -> None: ...


class WebChatChannel:
    """Pushes the bot's and agents' messages to every open socket of a visitor, on this
    node and, through ``events`` and ``load_outbound``, on the others.

    A visitor without an open socket still gets a :class:`Delivery`: the message is in the
    database and comes back with the history when the widget reconnects.
    """

    kind = CHANNEL

    def __init__(
        self,
        *,
        events: EventBus | None = None,
        load_outbound: OutboundLoader | None = None,
    ) -> None:
        self._sockets: dict[str, set[FrameSink]] = {}
        self._lock = asyncio.Lock()
        self._events = events
        self._load_outbound = load_outbound
        self._peers: asyncio.Task[None] | None = None
        self._following = asyncio.Event()

    async def start(self) -> None:
        if self._events is not None and self._load_outbound is not None and self._peers is None:
            self._following.clear()
            self._peers = asyncio.create_task(self._follow_peers(), name="webchat.peers")
            self._peers.add_done_callback(self._peers_stopped)
            await self._following.wait()  # subscribed: nothing sent from now on is missed
        logger.info("webchat.channel.started")

    async def stop(self) -> None:
        task, self._peers = self._peers, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self._lock:
            self._sockets.clear()

    async def attach(self, visitor: str, sink: FrameSink) -> None:
        async with self._lock:
            self._sockets.setdefault(visitor, set()).add(sink)

    async def detach(self, visitor: str, sink: FrameSink) -> None:
        async with self._lock:
            sinks = self._sockets.get(visitor)
            if sinks is not None:
                sinks.discard(sink)
                if not sinks:
                    del self._sockets[visitor]

    def connected(self, visitor: str) -> int:
        return len(self._sockets.get(visitor, ()))

    async def send(self, outbound: Outbound) -> Delivery:
        [result] = await self.send_batch([outbound])
        if isinstance(result, Exception):
            raise result
        return result

    async def send_batch(self, outbounds: Sequence[Outbound]) -> list[Delivery | Exception]:
        """Tell the other nodes about every message (one notice per ``ANNOUNCE_CHUNK``),
        then push each to the sockets held here, in order.

        The notice goes first: when the others cannot be told, this raises, the
        dispatcher retries the rows, and no socket has a frame twice."""
        sends = [
            (outbound.outbox_id, str(outbound.address.get("visitor") or ""))
            for outbound in outbounds
        ]
        if self._events is not None:
            announced = [[outbox_id, visitor] for outbox_id, visitor in sends if outbox_id]
            for start in range(0, len(announced), ANNOUNCE_CHUNK):
                await self._events.announce(
                    ConversationEvent(
                        PEER_OUTBOUND, None, {"sends": announced[start : start + ANNOUNCE_CHUNK]}
                    )
                )
        results: list[Delivery | Exception] = []
        for outbound, (outbox_id, visitor) in zip(outbounds, sends, strict=True):
            delivered = await self._push(visitor, outbound)
            results.append(Delivery(platform_id=f"webchat-{outbox_id}", meta={"live": delivered}))
        return results

    async def reconcile(self, outbound: Outbound) -> Delivery | None:
        """Always "not delivered, send it": a row a crash left in its ambiguous window is
        pushed again. That is harmless here: the message is in the history already, and
        the widget shows a message id once, so a visitor who got the first push drops
        the second. (Being reconcilable, a reply handed to the dispatcher right after
        its commit needs no separate stamping transaction: bot/outbox.py.)"""
        return None

    async def _push(self, visitor: str, outbound: Outbound) -> int:
        """Send one message's frame to the visitor's sockets on this node."""
        sinks = list(self._sockets.get(visitor, ()))
        if not sinks:
            return 0
        return await self._send_frame(
            visitor, sinks, orjson.dumps(outbound_frame(outbound)).decode()
        )

    async def _send_frame(self, visitor: str, sinks: list[FrameSink], data: str) -> int:
        delivered = 0
        for sink in sinks:
            try:
                async with asyncio.timeout(5):  # no extra task per frame, unlike wait_for
                    await sink.send_text(data)
                delivered += 1
            except Exception as exc:  # a dead socket: forget it, the history has the message
                logger.info("webchat.send.socket_dropped error=%s", type(exc).__name__)
                await self.detach(visitor, sink)
        return delivered

    # the other nodes ------------------------------------------------------------------------

    def _peers_stopped(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("webchat.peers.crashed", exc_info=task.exception())

    async def _follow_peers(self) -> None:
        assert self._events is not None
        async with self._events.subscribe(cluster=True, kinds=(PEER_OUTBOUND, RESYNC)) as queue:
            self._following.set()
            while True:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                try:
                    await self._from_peers(batch)
                except Exception:
                    # the messages are in the history: the sockets read it again
                    logger.exception("webchat.peers.delivery_failed events=%d", len(batch))
                    try:
                        await self._resync_sockets()
                    except Exception:
                        logger.exception("webchat.peers.resync_failed")

    async def _from_peers(self, events: list[ConversationEvent]) -> None:
        """Push what other nodes sent to sockets held here, in the order they sent it."""
        wanted: list[tuple[int, str]] = []
        for event in events:
            if event.kind == RESYNC:
                await self._resync_sockets()
                wanted.clear()  # the history read after a resync has them all
                continue
            if event.origin is None:
                continue
            sends = event.data.get("sends")
            if not isinstance(sends, list):
                logger.warning("webchat.peers.unreadable_notice")
                continue
            for entry in sends:
                if not (isinstance(entry, list) and len(entry) == 2):
                    continue
                outbox_id, visitor = entry[0], str(entry[1] or "")
                if isinstance(outbox_id, int) and self.connected(visitor):
                    wanted.append((outbox_id, visitor))
        if not wanted or self._load_outbound is None:
            return
        loaded = await self._load_outbound([outbox_id for outbox_id, _ in wanted])
        for outbox_id, visitor in wanted:
            outbound = loaded.get(outbox_id)
            if outbound is None:
                logger.warning("webchat.peers.unknown_outbox outbox_id=%s", outbox_id)
                continue
            await self._push(visitor, outbound)

    async def _resync_sockets(self) -> None:
        """Some messages from other nodes may have been missed: every socket held here
        re-reads its history (the widget skips what it already shows)."""
        data = orjson.dumps({"type": "resync"}).decode()
        for visitor, sinks in list(self._sockets.items()):
            await self._send_frame(visitor, list(sinks), data)
