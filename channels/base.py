"""The small contract every channel implements (re-exported from the core's ports)."""

from __future__ import annotations

from bot.ports import Channel, ChannelRegistry, InboundHandler, Reconciling
from bot.types import Attachment, Button, Delivery, HandleResult, Inbound, Outbound, Sender

__all__ = [
    "Attachment",
    "Button",
    "Channel",
    "ChannelRegistry",
    "Delivery",
    "HandleResult",
    "Inbound",
    "InboundHandler",
    "Outbound",
    "Reconciling",
    "Sender",
]
