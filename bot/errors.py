"""Errors that say what the caller should do.

Channels translate their library's exceptions into these at the adapter boundary, so the
dispatcher and pollers decide by type, never by parsing an SDK's message.
"""

from __future__ import annotations


class DeskbotError(Exception):
    """Base class of every error deskbot raises on purpose."""


class TransientError(DeskbotError):
    """Try again later; ``retry_after`` seconds when the platform said how long."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(TransientError):
    """The platform asked us to slow down on this channel (Slack 429, SMTP 421/451)."""


class PermanentError(DeskbotError):
    """Will fail again the same way: mark the item failed and tell a person."""


class RejectedInput(DeskbotError):
    """The sender's input cannot be accepted; the message is safe to show them."""


class ConfigError(DeskbotError):
    """Bad or missing configuration or credentials: disable the channel and alert."""
