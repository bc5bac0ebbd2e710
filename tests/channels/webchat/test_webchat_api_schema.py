"""R50: schemathesis over the REST API's OpenAPI document, against a real server with a
logged-in agent session and some data: no 5xx, every response matches the schema.

schemathesis drives requests synchronously, so the server runs in its own event loop on a
background thread (port 0); the test talks to it over loopback like any client.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.specs.openapi.checks import ignored_auth

from bot.tickets import NewTicket
from knowledge import KnowledgeBase
from storage.repositories import Alerts, Conversations, People
from tests.channels.webchat.webchat_harness import AGENT_PASSWORD, start_web_desk

T = TypeVar("T")


@dataclass
class LiveApi:
    base: str
    cookie: str


class LoopThread:
    """An event loop on a daemon thread, to host the server for synchronous callers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


async def _seed(core: Any) -> None:
    """A lead agent, a ticket with a conversation, and an alert, so paths hit real rows."""
    await core.agents.add_agent("lead", password=AGENT_PASSWORD, is_lead=True)
    now = core.clock.now()
    async with core.db.transaction() as session:
        person = await People(session).ensure_by_email(
            "alice@example.com", display_name="Alice", now=now
        )
        conversation, _ = await Conversations(session).find_or_open(
            channel="webchat", thread_key="webchat:seed", person_id=person.id, reply_to={}, now=now
        )
        await core.tickets.open(
            session,
            NewTicket(kind="incident", title="VPN drops", description="since Monday"),
            requester=person,
            conversation=conversation,
            now=now,
        )
        await Alerts(session).raise_alert(
            "abuse", "abusive messages", now=now, conversation_id=conversation.id
        )


def _login(base: str) -> str:
    with httpx.Client(base_url=base, timeout=10, trust_env=False) as http:
        http.get("/agent")
        token = http.get("/agent/api/login-token").json()["csrf"]
        response = http.post(
            "/agent/login",
            json={"username": "lead", "password": AGENT_PASSWORD},
            headers={"Origin": base, "X-CSRF-Token": token},
        )
        assert response.status_code == 200, response.text
        return str(response.cookies["deskbot_agent"])


@pytest.fixture
def live_api(tmp_path: Path, sample_kb: KnowledgeBase) -> Iterator[LiveApi]:
    host = LoopThread()
    try:
        core, server = host.run(start_web_desk(tmp_path, knowledge=sample_kb))
        try:
            host.run(_seed(core))
            base = f"http://127.0.0.1:{server.port}"
            yield LiveApi(base=base, cookie=_login(base))
        finally:
            host.run(core.dispatcher.stop())
            host.run(server.stop())
            host.run(core.db.dispose())
    finally:
        host.close()


def test_api_matches_its_openapi_document_and_never_fails(live_api: LiveApi) -> None:
    schema = schemathesis.openapi.from_url(f"{live_api.base}/api/openapi.json").include(
        path_regex=r"^/api/"
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 5
    headers = {"Cookie": f"deskbot_agent={live_api.cookie}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            response = case.call(base_url=live_api.base, headers=headers, timeout=10)
            # every default check (no 5xx, status code, content type, response schema…),
            # and that the API refuses the same request without the session cookie
            case.validate_response(response, headers=headers, additional_checks=[ignored_auth])

        check()
