"""The ports through which the core meets the outside: channels and their registry.

The protocol lives here, in the core, because the outbox dispatcher depends on it and the
core may not import ``channels``; ``channels/base.py`` re-exports it for adapters.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Protocol, runtime_checkable

from bot.types import Delivery, HandleResult, Inbound, Outbound

InboundHandler = Callable[[Inbound], Awaitable[HandleResult]]
"""What a channel is handed to deliver inbound messages into the core."""


@runtime_checkable
class Channel(Protocol):
    """A long-running connection to one platform.

    ``send`` delivers one outbound message and returns the platform's id of what it
    sent; it raises :class:`bot.errors.TransientError` (retry later),
    :class:`bot.errors.PermanentError` (give up) or :class:`bot.errors.ConfigError`.
    """

    kind: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, outbound: Outbound) -> Delivery: ...


@runtime_checkable
class Reconciling(Protocol):
    """A channel that can tell whether an outbox row already reached the platform.

    Used after a crash left a row in the ambiguous window (sent, not yet marked): the
    dispatcher asks before resending. ``None`` means "not there, safe to send".
    """

    async def reconcile(self, outbound: Outbound) -> Delivery | None: ...


@runtime_checkable
class SendsInBatches(Protocol):
    """A channel that delivers several outbound messages more cheaply together than one
    by one (web chat tells the other nodes about a whole batch in one notice).

    ``send_batch`` returns, for each message in order, its :class:`Delivery` or the
    exception that send would have raised; the messages of one conversation keep their
    order. The dispatcher uses it for channels without a rate limit.
    """

    async def send_batch(self, outbounds: Sequence[Outbound]) -> list[Delivery | Exception]: ...


class ChannelRegistry:
    """``{kind: channel}``, built by the composition root; looked up by the dispatcher."""

    def __init__(self, channels: list[Channel] | None = None) -> None:
        self._channels: dict[str, Channel] = {}
        for channel in channels or []:
            self.add(channel)

    def add(self, channel: Channel) -> None:
        if channel.kind in self._channels:
            raise ValueError(f"channel {channel.kind!r} registered twice")
        self._channels[channel.kind] = channel

    def get(self, kind: str) -> Channel | None:
        return self._channels.get(kind)

    def __contains__(self, kind: object) -> bool:
        return kind in self._channels

    def __iter__(self) -> Iterator[Channel]:
        return iter(list(self._channels.values()))

    def kinds(self) -> list[str]:
        return sorted(self._channels)
