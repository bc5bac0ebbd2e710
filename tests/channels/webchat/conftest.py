"""Fixtures for the web chat tests: ``web``, a running server over the real core."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from knowledge import KnowledgeBase
from tests.channels.webchat.webchat_harness import WebDesk, start_web_desk


@pytest.fixture
async def web(
    tmp_path: Path, request: pytest.FixtureRequest, sample_kb: KnowledgeBase
) -> AsyncIterator[WebDesk]:
    marker = request.node.get_closest_marker("webchat_settings")
    overrides = dict(marker.kwargs) if marker else {}
    core, server = await start_web_desk(tmp_path, knowledge=sample_kb, **overrides)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.port}", timeout=10, trust_env=False
    ) as http:
        try:
            yield WebDesk(core=core, server=server, http=http)
        finally:
            await core.dispatcher.stop()
            await server.stop()
            await core.db.dispose()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "webchat_settings(**overrides): settings for the `web` fixture's server"
    )
