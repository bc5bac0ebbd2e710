"""The terminal channel: try deskbot with nothing configured (``deskbot chat``).

It goes through the same manager, outbox and database as every other channel. Lines
come from standard input (a TTY or a pipe); replies are printed by the outbox dispatcher
calling :meth:`TerminalChannel.send`.
"""

from __future__ import annotations

import getpass
import itertools
import sys
import uuid
from typing import TextIO

from channels.base import Delivery, Inbound, Outbound, Sender


class TerminalChannel:
    """A local REPL channel for one person at this terminal."""

    kind = "terminal"

    def __init__(self, *, user: str | None = None, out: TextIO | None = None) -> None:
        self.user = user or getpass.getuser()
        self.session = uuid.uuid4().hex[:12]
        self.out = out or sys.stdout
        self._ids = itertools.count(1)
        self._choices: list[str] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.out.flush()

    def inbound(self, line: str) -> Inbound:
        """Turn a typed line into an Inbound; a number picks the last offered button."""
        text = line.strip()
        button = None
        if text.isdigit() and 1 <= int(text) <= len(self._choices):
            button = self._choices[int(text) - 1]
        return Inbound(
            channel=self.kind,
            external_id=f"{self.session}:{next(self._ids)}",
            sender=Sender(external_id=f"local:{self.user}", display_name=self.user),
            text=text,
            thread_key=f"terminal:{self.user}",
            reply_to={"user": self.user},
            button=button,
        )

    async def send(self, outbound: Outbound) -> Delivery:
        author = "agent" if outbound.author == "agent" else "deskbot"
        self.out.write(f"{author}> {outbound.markdown}\n")
        if outbound.buttons:
            self._choices = [b.value for b in outbound.buttons]
            for number, button in enumerate(outbound.buttons, start=1):
                self.out.write(f"   [{number}] {button.label}\n")
        if outbound.quick_replies:
            self.out.write("   (try: " + " | ".join(outbound.quick_replies) + ")\n")
        self.out.flush()
        return Delivery(platform_id=f"terminal-{outbound.outbox_id}")
