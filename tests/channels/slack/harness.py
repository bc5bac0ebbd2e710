"""The real core (build_core on a real database) with the live Slack channel on the fakes.

``SlackDesk`` posts signed requests through bolt's own verification (HTTP mode, via an
ASGI client) and moves work along explicitly: ``settle()`` runs the real inbox worker and
the real outbox dispatcher until nothing is due.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from bot.clock import ManualClock
from bot.inbox import InboxWorker
from bot.main import Core, build_channels, build_core
from bot.outbox import OutboxPolicy
from bot.types import HandleResult, Inbound
from channels.memory import MemoryChannel
from channels.slack.adapter import SlackChannel
from knowledge import KnowledgeBase
from storage.db import Database
from tests.channels.slack.fake_slack import DEFAULT_APP_TOKEN, DEFAULT_BOT_TOKEN, FakeSlackWebApi
from tests.channels.slack.signing import SignedRequest, SlackRequestSigner
from tests.conftest import make_settings

TRIAGE = "C0TRIAGE1"
ALICE = "U0ALICE01"
ALICE_DM = "D0ALICE01"
AGENT = "U0AGENT01"


class FakeMonotonic:
    """A monotonic clock the test moves (the adapter's per-channel pauses)."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


@dataclass
class SlackDesk:
    core: Core
    slack: SlackChannel
    fake: FakeSlackWebApi
    signer: SlackRequestSigner
    clock: ManualClock
    memory: MemoryChannel
    http: httpx.AsyncClient
    worker: InboxWorker
    monotonic: FakeMonotonic
    handled: list[Inbound] = field(default_factory=list)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def next_id(self, prefix: str = "Ev") -> str:
        return f"{prefix}{next(self._ids):08d}"

    async def post(self, request: SignedRequest) -> httpx.Response:
        return await self.http.post("/slack/events", content=request.body, headers=request.headers)

    def dm_event(self, text: str, *, user: str = ALICE, channel: str = ALICE_DM) -> dict[str, Any]:
        ts = self.fake.add_message(channel, text=text, user=user)["ts"]
        return {
            "type": "message",
            "channel": channel,
            "channel_type": "im",
            "user": user,
            "text": text,
            "ts": ts,
            "event_ts": ts,
        }

    async def dm(self, text: str, *, user: str = ALICE, event_id: str | None = None) -> str:
        event_id = event_id or self.next_id()
        response = await self.post(
            self.signer.event(self.dm_event(text, user=user), event_id=event_id)
        )
        assert response.status_code == 200, response.text
        return event_id

    async def thread_reply(self, text: str, *, thread_ts: str, user: str = AGENT) -> None:
        ts = self.fake.add_message(TRIAGE, text=text, user=user, thread_ts=thread_ts)["ts"]
        event = {
            "type": "message",
            "channel": TRIAGE,
            "channel_type": "channel",
            "user": user,
            "text": text,
            "ts": ts,
            "thread_ts": thread_ts,
            "event_ts": ts,
        }
        response = await self.post(self.signer.event(event, event_id=self.next_id()))
        assert response.status_code == 200, response.text

    async def click(
        self,
        value: str,
        *,
        user: str = AGENT,
        action_id: str,
        channel: str = TRIAGE,
        message_ts: str = "1.0",
    ) -> httpx.Response:
        payload = {
            "type": "block_actions",
            "user": {"id": user, "name": user.lower()},
            "team": {"id": "T0DESK001"},
            "api_app_id": "A0DESKBOT",
            "trigger_id": f"trigger.{next(self._ids)}",
            "container": {"type": "message", "channel_id": channel, "message_ts": message_ts},
            "channel": {"id": channel},
            "actions": [
                {
                    "type": "button",
                    "action_id": action_id,
                    "block_id": "b",
                    "value": value,
                    "text": {"type": "plain_text", "text": value},
                    "action_ts": f"{1700000000 + next(self._ids)}.000100",
                }
            ],
        }
        return await self.post(self.signer.interaction(payload))

    async def settle(self) -> None:
        """Handle every accepted inbound, then deliver every due outbox row."""
        for _ in range(50):
            handled = await self.worker.run_once()
            await self.core.dispatcher.drain()
            if not handled:
                return
        raise AssertionError("inbox did not settle")

    def card(self) -> dict[str, Any]:
        cards = [m for m in self.fake.messages_in(TRIAGE) if m.get("metadata")]
        assert cards, "no escalation card in the triage channel"
        return cards[-1]

    def posts_to(self, channel: str) -> list[dict[str, Any]]:
        return [m for m in self.fake.all_messages(channel) if m.get("bot_id")]


def blocks_text(message: dict[str, Any]) -> str:
    return message.get("text", "") + json.dumps(message.get("blocks") or [])


async def make_desk(
    database: Database,
    tmp_path: Path,
    fake: FakeSlackWebApi,
    signer: SlackRequestSigner,
    *,
    handler: Callable[[Inbound], Awaitable[HandleResult]] | None = None,
    socket_mode: bool = False,
    knowledge: KnowledgeBase | None = None,
) -> SlackDesk:
    clock = ManualClock()
    settings = make_settings(
        tmp_path,
        slack_bot_token=DEFAULT_BOT_TOKEN,
        slack_signing_secret=signer.signing_secret,
        slack_app_token=DEFAULT_APP_TOKEN if socket_mode else None,
        slack_api_url=fake.api_url,
        slack_triage_channel=TRIAGE,
        slack_agent_usergroup="S0AGENTS1",
    )
    core = build_core(
        settings,
        clock=clock,
        database=database,
        knowledge=knowledge,
        policy=OutboxPolicy(base_backoff=0.01, max_backoff=0.05, poll_seconds=0.05),
    )
    slack = next(c for c in build_channels(core) if c.kind == "slack")
    assert isinstance(slack, SlackChannel)
    monotonic = FakeMonotonic()
    slack.monotonic = monotonic
    core.registry.add(slack)
    memory = MemoryChannel()
    core.registry.add(memory)
    worker = InboxWorker(
        core.inbox, handler or core.manager.handle, base_backoff=0.01, poll_seconds=0.05
    )
    app = FastAPI()
    app.include_router(slack.router())
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://desk.test")
    return SlackDesk(
        core=core,
        slack=slack,
        fake=fake,
        signer=signer,
        clock=clock,
        memory=memory,
        http=http,
        worker=worker,
        monotonic=monotonic,
    )
