"""One turn of a conversation: what came in, who sent it, and the replies being built."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.types import Button, Inbound
from storage.models import Conversation, Person
from storage.repositories import MessageRow


@dataclass(slots=True)
class Reply:
    """A reply the router wants sent; the manager turns it into a message + outbox row."""

    markdown: str
    buttons: tuple[Button, ...] = ()
    quick_replies: tuple[str, ...] = ()
    kind: str = "reply"
    ticket_number: str | None = None
    subject: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Turn:
    """Everything a handler may look at or change while one inbound message is handled.

    Handlers change state through ``session`` (inside the manager's transaction) and
    answer with :meth:`say`; ``route`` and ``reason`` record why (explainability).
    """

    session: AsyncSession
    inbound: Inbound
    person: Person
    conversation: Conversation
    message: MessageRow
    now: datetime
    replies: list[Reply] = field(default_factory=list)
    route: str = "unrouted"
    reason: str = ""
    after_commit: list[Any] = field(default_factory=list)
    escalation: str | None = None  # set when this turn queued the conversation for agents
    feedback: list[tuple[str, str]] = field(default_factory=list)
    """(article id, ``offered`` | ``accepted`` | ``rejected``): written with the turn."""

    @property
    def text(self) -> str:
        return self.inbound.text

    def say(
        self,
        markdown: str,
        *,
        buttons: tuple[Button, ...] | list[Button] = (),
        quick_replies: tuple[str, ...] | list[str] = (),
        kind: str = "reply",
        ticket_number: str | None = None,
        subject: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.replies.append(
            Reply(
                markdown=markdown,
                buttons=tuple(buttons),
                quick_replies=tuple(quick_replies),
                kind=kind,
                ticket_number=ticket_number,
                subject=subject,
                meta=meta or {},
            )
        )

    def article_feedback(self, article_id: str, outcome: str) -> None:
        """Count a knowledge article as offered, accepted or rejected in this turn."""
        if outcome not in ("offered", "accepted", "rejected"):
            raise ValueError(f"unknown article feedback {outcome!r}")
        self.feedback.append((article_id, outcome))

    def routed(self, route: str, reason: str) -> None:
        self.route = route
        self.reason = reason
