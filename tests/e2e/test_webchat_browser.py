"""The web chat and the agent console in headless Chromium (Debian's, driven by Playwright):
what a visitor and an agent actually see, including R38 (markup stays inert)."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.channels.webchat.webchat_harness import AGENT_PASSWORD, start_web_desk
from tests.conftest import REPO_ROOT, need_peer

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-proxy-server",
]
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
TIMEOUT_MS = 15_000
XSS_IMG = '<img src=x onerror="window.__pwned=1">'
XSS_LINK = "[click me](javascript:window.__pwned=2)"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    need_peer(
        Path(CHROMIUM).exists() or shutil.which("chromium") is not None,
        f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)",
    )
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


def _watch_csp(page: Any, problems: list[str]) -> None:
    def on_console(message: Any) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            problems.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))


async def _bot_messages(page: Any) -> int:
    return int(await page.locator(".dkb-log .dkb-bot, .dkb-log .dkb-system").count())


async def _wait_more_bot_messages(page: Any, than: int) -> None:
    await page.wait_for_function(
        "n => document.querySelectorAll('.dkb-log .dkb-bot, .dkb-log .dkb-system').length > n",
        arg=than,
        timeout=TIMEOUT_MS,
    )


async def test_visitor_and_agent_in_a_real_browser(browser: Any, tmp_path: Path) -> None:
    core, server = await start_web_desk(tmp_path)
    base = f"http://127.0.0.1:{server.port}"
    problems: list[str] = []
    try:
        await core.agents.add_agent("ana", password=AGENT_PASSWORD, display_name="Ana Agent")
        visitor_ctx = await browser.new_context(viewport={"width": 375, "height": 740})
        visitor = await visitor_ctx.new_page()
        _watch_csp(visitor, problems)
        await visitor.goto(base + "/")
        await visitor.get_by_role("button", name="Chat with IT").click()
        status = visitor.get_by_role("status")
        await status.filter(has_text="Online").wait_for(timeout=TIMEOUT_MS)
        log = visitor.get_by_role("log")
        box = visitor.get_by_role("textbox", name="Message")

        # a knowledge-base answer, then "did this help?" → no → questions → a ticket
        await box.fill("how do I connect to the vpn")
        await box.press("Enter")
        no = log.get_by_role("button", name="No", exact=True)
        await no.wait_for(timeout=TIMEOUT_MS)
        assert "Did this help?" in await log.inner_text()
        before = await _bot_messages(visitor)
        await no.click()
        await _wait_more_bot_messages(visitor, before)
        for _ in range(6):
            if re.search(r"INC-\d+", await log.inner_text()):
                break
            choice = log.locator(".dkb-choice:not([disabled])").first
            await choice.wait_for(timeout=TIMEOUT_MS)
            before = await _bot_messages(visitor)
            await choice.click()
            await _wait_more_bot_messages(visitor, before)
        ticket = re.search(r"INC-\d+", await log.inner_text())
        assert ticket is not None, await log.inner_text()

        # ask for a person, and try to smuggle markup in
        before = await _bot_messages(visitor)
        await box.fill("talk to a human")
        await box.press("Enter")
        await log.locator(".dkb-me .dkb-receipt", has_text="Sent").last.wait_for(timeout=TIMEOUT_MS)
        await box.fill(f"{XSS_IMG} {XSS_LINK}")
        await box.press("Enter")
        await log.locator(".dkb-me", has_text="onerror").wait_for(timeout=TIMEOUT_MS)

        # the agent logs in, claims and replies (with markup that must stay inert too)
        agent_ctx = await browser.new_context(viewport={"width": 1280, "height": 860})
        console = await agent_ctx.new_page()
        _watch_csp(console, problems)
        await console.goto(base + "/agent")
        await console.get_by_label("Username").fill("ana")
        await console.get_by_label("Password").fill(AGENT_PASSWORD)
        await console.get_by_role("button", name="Log in").click()
        await console.locator("#live[data-state=online]").wait_for(timeout=TIMEOUT_MS)
        item = console.locator(".queue-item").first
        await item.wait_for(timeout=TIMEOUT_MS)
        await item.click()
        await console.get_by_role("button", name="Claim").click()
        await (
            console.get_by_role("button", name="Send reply")
            .and_(console.locator(":enabled"))
            .wait_for(timeout=TIMEOUT_MS)
        )
        await log.locator(".dkb-system", has_text="Ana Agent").wait_for(timeout=TIMEOUT_MS)
        transcript = console.get_by_role("log", name="Transcript")
        await transcript.locator(".m-text", has_text="onerror").wait_for(timeout=TIMEOUT_MS)
        bot_before_reply = await _bot_messages(visitor)
        await console.get_by_label("Reply").fill(f"On it! {XSS_IMG} {XSS_LINK}")
        await console.get_by_role("button", name="Send reply").click()
        agent_reply = log.locator(".dkb-agent", has_text="On it!")
        await agent_reply.wait_for(timeout=TIMEOUT_MS)
        assert await agent_reply.locator("img").count() == 0
        assert await agent_reply.locator("a[href^='javascript']").count() == 0
        assert await _bot_messages(visitor) == bot_before_reply  # the bot stayed silent
        await transcript.locator(".m-text", has_text="On it!").wait_for(timeout=TIMEOUT_MS)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await console.screenshot(path=str(SCREENSHOTS / "console.png"), full_page=True)

        # a reload keeps the history
        await visitor.reload()
        await visitor.get_by_role("button", name="Chat with IT").click()
        await log.locator(".dkb-agent", has_text="On it!").wait_for(timeout=TIMEOUT_MS)
        assert ticket.group(0) in await log.inner_text()
        assert "how do I connect to the vpn" in await log.inner_text()
        await visitor.screenshot(path=str(SCREENSHOTS / "widget.png"))

        # the agent resolves; the visitor is told
        await console.get_by_role("button", name="Resolve").click()
        await log.locator(".dkb-system", has_text="resolved").wait_for(timeout=TIMEOUT_MS)

        for page in (visitor, console):
            assert await page.evaluate("window.__pwned === undefined")
            assert await page.locator(".dkb-log img, #transcript img").count() == 0
        assert problems == []
    finally:
        await core.dispatcher.stop()
        await server.stop()
        await core.db.dispose()


async def test_widget_reconnects_and_sends_what_was_typed_offline(
    browser: Any, tmp_path: Path
) -> None:
    from channels.http.server import HttpServer

    core, server = await start_web_desk(tmp_path)
    app, port = server.app, server.port
    base = f"http://127.0.0.1:{port}"
    try:
        page = await (await browser.new_context(viewport={"width": 375, "height": 740})).new_page()
        await page.goto(base + "/")
        await page.get_by_role("button", name="Chat with IT").click()
        status = page.get_by_role("status")
        await status.filter(has_text="Online").wait_for(timeout=TIMEOUT_MS)
        log = page.get_by_role("log")
        box = page.get_by_role("textbox", name="Message")

        await server.stop()  # the server goes away: the widget says so
        await status.filter(has_text="Offline").wait_for(timeout=TIMEOUT_MS)
        await box.fill("hello, anyone there?")
        await box.press("Enter")
        pending = log.locator(".dkb-me", has_text="anyone there")
        await pending.locator(".dkb-receipt", has_text="Sending").wait_for(timeout=TIMEOUT_MS)

        server = HttpServer(app, host="127.0.0.1", port=port)  # back on the same address
        await server.start()
        await status.filter(has_text="Online").wait_for(timeout=30_000)
        await pending.locator(".dkb-receipt", has_text="Sent").wait_for(timeout=TIMEOUT_MS)
        await log.locator(".dkb-bot").first.wait_for(timeout=TIMEOUT_MS)
        await core.dispatcher.drain()
        from storage.repositories import Conversations

        async with core.db.read() as session:
            conversations = await Conversations(session).in_state(("bot",))
            assert len(conversations) == 1
            messages = await Conversations(session).messages(conversations[0].id)
        inbound = [m.text for m in messages if m.direction == "in"]
        assert inbound == ["hello, anyone there?"]

        # recovery after a crash pushes a reply again (web chat "reconciles" by resending):
        # the visitor sees it once; a new message pushed after it shows as usual
        from sqlalchemy import select

        from bot.types import Outbound
        from storage.models import OutboxRow

        async with core.db.read() as session:
            rows = await session.execute(select(OutboxRow).order_by(OutboxRow.id))
            row = rows.scalars().first()
        assert row is not None and row.status == "sent"
        webchat = core.registry.get("webchat")
        assert webchat is not None
        again = Outbound.from_json(row.payload, outbox_id=row.id)
        assert await webchat.reconcile(again) is None  # type: ignore[attr-defined]
        shown = await _bot_messages(page)
        await webchat.send(again)
        sentinel = Outbound.from_json(
            {**row.payload, "markdown": "a later message", "meta": {"message_id": -1}},
            outbox_id=row.id + 1000,
        )
        await webchat.send(sentinel)
        await log.locator(".dkb-bot", has_text="a later message").wait_for(timeout=TIMEOUT_MS)
        assert await _bot_messages(page) == shown + 1
    finally:
        await core.dispatcher.stop()
        await server.stop()
        await core.db.dispose()
