"""Measure how the router classifies messages: transaction, knowledge answer or conversation.

Each case is sent as the first message of a new person through the real manager on a
scratch database; the route the manager recorded is mapped to a category and compared
with the expected one. Used by ``benchmarks/intent_routing.py`` and the routing test.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bot.clock import ManualClock
from bot.settings import Settings
from bot.types import Inbound, Sender
from storage.db import Database
from storage.migrate import upgrade

ROUTE_CATEGORIES = {
    "command.help": "help",
    "intent.help": "help",
    "intent.greeting": "greeting",
    "intent.thanks": "thanks",
    "intent.goodbye": "goodbye",
    "command.status": "ticket_status",
    "intent.ticket_status": "ticket_status",
    "command.my_tickets": "my_tickets",
    "intent.my_tickets": "my_tickets",
    "request.password_reset": "password_reset",
    "request.access_request": "access_request",
    "intent.subscribe": "subscribe",
    "intent.unsubscribe": "unsubscribe",
    "escalate": "human",
    "command.close": "close_ticket",
    "intent.close_ticket": "close_ticket",
    "intent.outage_check": "outage_check",
    "outage": "outage_check",
    "kb.answer": "kb",
    "kb.suggest": "kb",
    "flow.incident": "conversation",
    "ticket.opened": "conversation",
    "care.abuse": "abuse",
    "care.frustration": "frustration",
}


def category_of(route: str | None) -> str:
    return ROUTE_CATEGORIES.get(route or "", route or "none")


@dataclass
class RoutingReport:
    n: int = 0
    correct: int = 0
    per_expected: Counter[str] = field(default_factory=Counter)
    per_expected_correct: Counter[str] = field(default_factory=Counter)
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    misses: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


def load_cases(path: Path) -> list[tuple[str, str]]:
    cases = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            cases.append((item["text"], item["expected"]))
    return cases


async def evaluate(cases: list[tuple[str, str]], settings: Settings) -> RoutingReport:
    from bot.main import build_core

    with tempfile.TemporaryDirectory() as scratch:
        database = Database(f"sqlite+aiosqlite:///{Path(scratch) / 'routing.sqlite3'}")
        await upgrade(database)
        core = build_core(settings, clock=ManualClock(), database=database)
        report = RoutingReport()
        for index, (text, expected) in enumerate(cases):
            user = f"person-{index}"
            result = await core.manager.handle(
                Inbound(
                    channel="eval",
                    external_id=f"case-{index}",
                    sender=Sender(external_id=user, display_name=user),
                    text=text,
                    thread_key=f"eval:{user}",
                )
            )
            got = category_of(result.route)
            report.n += 1
            report.per_expected[expected] += 1
            if got == expected:
                report.correct += 1
                report.per_expected_correct[expected] += 1
            else:
                report.confusion[(expected, got)] += 1
                report.misses.append((text, expected, got))
        await database.dispose()
    return report
