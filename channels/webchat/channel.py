"""The web chat channel: live WebSocket connections per visitor, and ``send`` to them."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Protocol

from channels.base import Delivery, Outbound
from channels.webchat.convert import CHANNEL, outbound_frame

logger = logging.getLogger(__name__)


class FrameSink(Protocol):
    """One open socket, as far as the channel needs it (a Starlette WebSocket fits)."""

    async def send_text(self, data: str) -> None: ...


class WebChatChannel:
    """Pushes the bot's and agents' messages to every open socket of a visitor.

    A visitor without an open socket still gets a :class:`Delivery`: the message is in the
    database and comes back with the history when the widget reconnects.
    """

    kind = CHANNEL

    def __init__(self) -> None:
        self._sockets: dict[str, set[FrameSink]] = {}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        logger.info("webchat.channel.started")

    async def stop(self) -> None:
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
        visitor = str(outbound.address.get("visitor") or "")
        platform_id = f"webchat-{outbound.outbox_id}"
        sinks = list(self._sockets.get(visitor, ()))
        if not sinks:
            return Delivery(platform_id=platform_id, meta={"live": 0})
        data = json.dumps(outbound_frame(outbound))
        delivered = 0
        for sink in sinks:
            try:
                async with asyncio.timeout(5):  # no extra task per frame, unlike wait_for
                    await sink.send_text(data)
                delivered += 1
            except Exception as exc:  # a dead socket: forget it, the history has the message
                logger.info("webchat.send.socket_dropped error=%s", type(exc).__name__)
                await self.detach(visitor, sink)
        return Delivery(platform_id=platform_id, meta={"live": delivered})
