"""An in-process channel: the test harness and benchmarks talk to the real core through it.

It is a real channel (registered, sent to by the outbox dispatcher), only its "platform"
is a list in memory. Each send is recorded with a platform id, and waiters are woken.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

from bot.errors import TransientError
from channels.base import Delivery, Outbound


@dataclass(frozen=True, slots=True)
class Sent:
    platform_id: str
    outbound: Outbound


class MemoryChannel:
    """Records what the bot sends; can be told to fail the next N sends."""

    def __init__(self, kind: str = "memory") -> None:
        self.kind = kind
        self.sent: list[Sent] = []
        self.fail_next = 0
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def send(self, outbound: Outbound) -> Delivery:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise TransientError("memory channel told to fail")
        platform_id = f"{self.kind}-{next(self._ids)}"
        async with self._changed:
            self.sent.append(Sent(platform_id, outbound))
            self._changed.notify_all()
        return Delivery(platform_id=platform_id)

    def to(self, address_key: str, value: str) -> list[Outbound]:
        return [s.outbound for s in self.sent if s.outbound.address.get(address_key) == value]

    async def wait_for(self, count: int, *, timeout: float = 5.0) -> list[Sent]:
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.sent) >= count), timeout=timeout
            )
            return list(self.sent)
