"""Fixtures for the Slack channel tests: the fake Web API, the fake Socket Mode server,
a Web API client pointed at the fake, and a signer for inbound HTTP requests.

The helper modules sit next to this file and are imported as ``tests.channels.slack.*``
(pytest runs with ``--import-mode=importlib`` and the repository root on ``pythonpath``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from tests.channels.slack.block_kit_examples import render as render_block_kit_examples
from tests.channels.slack.fake_slack import (
    DEFAULT_APP_TOKEN,
    DEFAULT_BOT_TOKEN,
    FakeSlackWebApi,
    SlackUser,
)
from tests.channels.slack.fake_socket_mode import FakeSocketMode
from tests.channels.slack.signing import SlackRequestSigner

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # slack_sdk reads proxy variables itself; loopback traffic must never go through one.
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlackWebApi]:
    """A started fake Web API with two employees and an agent group."""
    fake = FakeSlackWebApi()
    fake.add_user(
        SlackUser(
            id="U0ALICE01",
            name="alice",
            real_name="Alice Example",
            display_name="alice",
            email="alice@example.com",
        )
    )
    fake.add_user(
        SlackUser(
            id="U0AGENT01",
            name="bob",
            real_name="Bob Agent",
            display_name="bob",
            email="bob@example.com",
        )
    )
    fake.set_usergroup("S0AGENTS1", ["U0AGENT01"])
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def fake_socket_mode(fake_slack: FakeSlackWebApi) -> AsyncIterator[FakeSocketMode]:
    """A started Socket Mode server whose URL the fake Web API hands out."""
    server = FakeSocketMode(app_id=fake_slack.app_id)
    fake_slack.socket_mode_url = await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def slack_client(fake_slack: FakeSlackWebApi) -> AsyncWebClient:
    """A bot-token client on the fake; no retry handlers, so every fault shows."""
    return AsyncWebClient(token=DEFAULT_BOT_TOKEN, base_url=fake_slack.api_url, retry_handlers=[])


@pytest.fixture
def slack_app_token() -> str:
    return DEFAULT_APP_TOKEN


@pytest.fixture
def slack_signing_secret() -> str:
    return SIGNING_SECRET


@pytest.fixture
def slack_signer() -> SlackRequestSigner:
    return SlackRequestSigner(SIGNING_SECRET)


@pytest.fixture
def block_kit_examples_markdown() -> str:
    """The Block Kit examples section of docs/slack.md, rendered from the converters now."""
    return render_block_kit_examples()
