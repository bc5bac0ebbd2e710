"""The agent console over real HTTP and WebSocket: CSP, login, CSRF (R37), takeover from
the widget, sessions ending on deactivation or a password change (R40)."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.channels.webchat.webchat_harness import (
    AGENT_PASSWORD,
    FOREIGN_ORIGIN,
    AgentClient,
    WebDesk,
    frames_until,
    next_frame,
)

REQUIRED_CSP = (
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self' ws: wss:",
    "frame-ancestors 'none'",
)


@pytest.fixture
async def agent(web: WebDesk) -> AgentClient:
    await web.core.agents.add_agent("ana", password=AGENT_PASSWORD, display_name="Ana Agent")
    client = httpx.AsyncClient(base_url=web.base, timeout=10, trust_env=False)
    return AgentClient(desk=web, http=client)


@pytest.mark.parametrize("path", ["/", "/agent"])
async def test_html_pages_carry_a_strict_csp_and_no_inline_script(web: WebDesk, path: str) -> None:
    response = await web.http.get(path)
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    for directive in REQUIRED_CSP:
        assert directive in csp
    assert "unsafe-inline" not in csp
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", response.text) is None
    assert re.search(r"\son[a-z]+=", response.text) is None  # no inline handlers


async def test_login_with_wrong_password_is_refused(web: WebDesk, agent: AgentClient) -> None:
    async with agent.http:
        response = await agent.login("ana", "wrong")
        assert response.status_code == 401
        assert (await agent.http.get("/agent/api/me")).status_code == 401


async def test_posts_without_csrf_or_from_another_origin_are_refused(
    web: WebDesk, agent: AgentClient
) -> None:
    async with agent.http:
        # the login form itself needs the token
        await agent.http.get("/agent")
        bare_login = await agent.http.post(
            "/agent/login",
            json={"username": "ana", "password": AGENT_PASSWORD},
            headers={"Origin": web.origin},
        )
        assert bare_login.status_code == 403
        assert (await agent.login("ana")).status_code == 200
        path = "/agent/api/conversations/1/claim"
        no_token = await agent.http.post(path, json={}, headers={"Origin": web.origin})
        wrong_token = await agent.http.post(
            path, json={}, headers={"Origin": web.origin, "X-CSRF-Token": "forged"}
        )
        foreign = await agent.http.post(
            path, json={}, headers={"Origin": FOREIGN_ORIGIN, "X-CSRF-Token": agent.csrf}
        )
        no_origin = await agent.http.post(path, json={}, headers={"X-CSRF-Token": agent.csrf})
        assert [r.status_code for r in (no_token, wrong_token, foreign, no_origin)] == [403] * 4
        logout = await agent.http.post("/agent/logout", headers={"Origin": web.origin})
        assert logout.status_code == 403


async def test_agent_takes_over_from_the_widget(web: WebDesk, agent: AgentClient) -> None:
    visitor = await web.session()
    async with agent.http, web.connect(visitor["visitor"], visitor["token"]) as ws:
        await next_frame(ws, kind="hello")
        await ws.send(json.dumps({"type": "message", "client_id": "h1", "text": "talk to a human"}))
        await frames_until(ws, lambda f: f.get("type") == "ack")
        await web.core.dispatcher.drain()
        assert (await agent.login("ana")).status_code == 200
        queue = (await agent.http.get("/agent/api/queue")).json()["queue"]
        assert len(queue) == 1 and queue[0]["state"] == "queued"
        cid = queue[0]["id"]
        card = (await agent.http.get(f"/agent/api/conversations/{cid}")).json()
        assert card["channel"] == "webchat"
        assert any("talk to a human" in m["text"] for m in card["transcript"])
        assert card["escalation_reason"]

        async with agent.connect() as live:
            assert (await next_frame(live))["type"] == "hello"
            assert (await agent.post(f"/agent/api/conversations/{cid}/claim")).status_code == 200
            await frames_until(
                ws, lambda f: f.get("type") == "message" and "Ana Agent" in f["markdown"]
            )
            changed = await next_frame(live, kind="changed")
            assert changed["conversations"] == [cid]

        again = await agent.post(f"/agent/api/conversations/{cid}/claim")
        assert again.status_code == 409

        reply = await agent.post(
            f"/agent/api/conversations/{cid}/reply", {"text": "Hi, I'm looking at it now."}
        )
        assert reply.status_code == 200
        frames = await frames_until(
            ws, lambda f: f.get("type") == "message" and f.get("author") == "agent"
        )
        assert frames[-1]["markdown"] == "Hi, I'm looking at it now."
        note = await agent.post(
            f"/agent/api/conversations/{cid}/note", {"text": "internal: check the VPN logs"}
        )
        assert note.status_code == 200

        # while the agent owns the conversation, the bot stays silent
        await ws.send(json.dumps({"type": "message", "client_id": "h2", "text": "thanks!"}))
        await frames_until(ws, lambda f: f.get("type") == "ack")
        await web.core.dispatcher.drain()
        history = (await web.http.get("/webchat/history", params=visitor)).json()["messages"]
        assert history[-1]["direction"] == "in" and history[-1]["markdown"] == "thanks!"
        assert all("check the VPN logs" not in m["markdown"] for m in history)

        resolved = await agent.post(f"/agent/api/conversations/{cid}/resolve")
        assert resolved.status_code == 200
        await frames_until(ws, lambda f: f.get("type") == "message" and "resolved" in f["markdown"])
        assert (await agent.http.get("/agent/api/queue")).json()["queue"] == []


async def test_console_socket_needs_session_and_same_origin(
    web: WebDesk, agent: AgentClient
) -> None:
    async with agent.http:
        with pytest.raises(InvalidStatus) as anonymous:
            async with agent.connect():
                pass
        assert anonymous.value.response.status_code == 403
        assert (await agent.login("ana")).status_code == 200
        with pytest.raises(InvalidStatus) as foreign:
            async with agent.connect(origin=FOREIGN_ORIGIN):
                pass
        assert foreign.value.response.status_code == 403


async def test_deactivated_agent_loses_http_and_socket_sessions(
    web: WebDesk, agent: AgentClient
) -> None:
    async with agent.http:
        assert (await agent.login("ana")).status_code == 200
        me = (await agent.http.get("/agent/api/me")).json()["agent"]
        async with agent.connect() as live:
            assert (await next_frame(live))["type"] == "hello"
            await web.core.agents.deactivate(me["id"])
            ended = await next_frame(live)  # within the console's recheck interval
            assert ended == {"type": "session_ended"}
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(live.recv(), timeout=10)
            assert live.close_code == 4401
        assert (await agent.http.get("/agent/api/me")).status_code == 401
        assert (await agent.http.get("/agent/api/queue")).status_code == 401


async def test_password_change_ends_the_session(web: WebDesk, agent: AgentClient) -> None:
    async with agent.http:
        assert (await agent.login("ana")).status_code == 200
        me = (await agent.http.get("/agent/api/me")).json()["agent"]
        await web.core.agents.set_password(me["id"], "a whole new password")
        assert (await agent.http.get("/agent/api/me")).status_code == 401
        claim = await agent.post("/agent/api/conversations/1/claim")
        assert claim.status_code == 401


async def test_a_burst_of_events_reaches_the_console_as_a_few_frames(
    web: WebDesk, agent: AgentClient
) -> None:
    """A busy desk publishes an event per bot message; the page gets one frame per short
    window naming what changed, and the session is not re-read for each event."""
    from bot.events import ConversationEvent

    reads = 0
    get_agent = web.core.agents.get_agent

    async def counted(agent_id: int):  # type: ignore[no-untyped-def]
        nonlocal reads
        reads += 1
        return await get_agent(agent_id)

    async with agent.http:
        assert (await agent.login("ana")).status_code == 200
        async with agent.connect() as live:
            assert (await next_frame(live))["type"] == "hello"
            web.core.agents.get_agent = counted  # type: ignore[method-assign]
            for cid in range(1, 41):  # forty conversations, three events each
                for kind in ("message", "message", "delivered"):
                    web.core.events.publish(ConversationEvent(kind, cid, {}))
            first = await next_frame(live, kind="changed")
            assert sorted(first["conversations"]) == list(range(1, 41))
            for cid in range(1000, 1300):  # more than a frame names: "all"
                web.core.events.publish(ConversationEvent("message", cid, {}))
            assert (await next_frame(live, kind="changed")) == {"type": "changed", "all": True}
            assert reads <= 1  # not once per event
