"""The web chat channel: an embeddable widget over a WebSocket, and the agent console."""

from __future__ import annotations

from channels.webchat.channel import WebChatChannel

__all__ = ["WebChatChannel"]
