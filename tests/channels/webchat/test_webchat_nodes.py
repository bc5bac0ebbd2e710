"""Web chat and the agent console across two nodes on one real PostgreSQL database.

Each node is a whole ``deskbot run`` composition root (:class:`bot.main.Runtime`): its own
engine, event bus, LISTEN connection, outbox dispatcher and uvicorn server on its own
loopback port. The visitor's socket is on node A; the replies are sent by node B's
dispatcher (A's is stopped) or made by an agent on node B's console.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection

from bot.main import Runtime
from channels.webchat import WebChatChannel
from channels.webchat.channel import PEER_OUTBOUND
from knowledge import KnowledgeBase
from storage.db import Database
from storage.models import OutboxRow
from tests.channels.webchat.webchat_harness import (
    AGENT_PASSWORD,
    IDENTITY_SECRET,
    INTRANET_ORIGIN,
    AgentClient,
    WebDesk,
    frames_until,
    next_frame,
)
from tests.conftest import _truncate_pg, make_settings

WAIT = 30.0  # generous: the tests wait for events, they do not measure speed


@dataclass
class Node:
    runtime: Runtime
    web: WebDesk
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def webchat(self) -> WebChatChannel:
        channel = self.runtime.core.registry.get("webchat")
        assert isinstance(channel, WebChatChannel)
        return channel

    async def agent(self, username: str) -> AgentClient:
        http = httpx.AsyncClient(base_url=self.web.base, timeout=10, trust_env=False)
        self.clients.append(http)  # closed with the node
        client = AgentClient(desk=self.web, http=http)
        assert (await client.login(username)).status_code == 200
        return client


@pytest.fixture
async def nodes(
    pg_database_url: str, tmp_path: Path, sample_kb: KnowledgeBase
) -> AsyncIterator[tuple[Node, Node]]:
    database = Database(pg_database_url)
    await _truncate_pg(database)
    await database.dispose()
    started: list[Node] = []
    try:
        for name in ("a", "b"):
            settings = make_settings(
                tmp_path / name,
                database_url=pg_database_url,
                http_host="127.0.0.1",
                http_port=0,
                webchat_identity_secret=IDENTITY_SECRET,
                webchat_allowed_origins=[INTRANET_ORIGIN],
            )
            runtime = Runtime(settings, knowledge=sample_kb)
            await runtime.start()
            http = httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{runtime.http.port}", timeout=10, trust_env=False
            )
            started.append(Node(runtime, WebDesk(runtime.core, runtime.http, http)))
        a, b = started
        # only B's dispatcher delivers: every reply to A's visitor crosses over
        await a.runtime.core.dispatcher.stop()
        yield a, b
    finally:
        for node in reversed(started):
            for client in node.clients:
                await client.aclose()
            await node.web.http.aclose()
            await node.runtime.stop()


async def _say(ws: ClientConnection, client_id: str, text: str) -> list[dict[str, Any]]:
    """Send a message; the frames received up to and including its ack."""
    await ws.send(json.dumps({"type": "message", "client_id": client_id, "text": text}))
    return await frames_until(ws, lambda f: f.get("type") == "ack" and f["client_id"] == client_id)


async def _settled(node: Node) -> list[OutboxRow]:
    """Every outbox row, once none is pending or being sent."""
    async with asyncio.timeout(WAIT):
        while True:
            async with node.runtime.core.db.read() as session:
                rows = list(
                    (await session.execute(select(OutboxRow).order_by(OutboxRow.id))).scalars()
                )
            if rows and all(row.status not in ("pending", "sending") for row in rows):
                return rows
            await asyncio.sleep(0.05)


def _messages(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f.get("type") == "message"]


async def _agent_reply_reaches(agent: Any, cid: int, text: str, ws: ClientConnection) -> None:
    """An agent's reply through the console API arrives on the visitor's socket."""
    reply = await agent.post(f"/agent/api/conversations/{cid}/reply", {"text": text})
    assert reply.status_code == 200
    frames = await frames_until(
        ws, lambda f: f.get("type") == "message" and f.get("author") == "agent", timeout=WAIT
    )
    assert frames[-1]["markdown"] == text


async def test_replies_sent_by_another_nodes_dispatcher_reach_the_socket_once(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    visitor = await a.web.session()
    async with a.web.connect(visitor["visitor"], visitor["token"]) as ws:
        assert (await next_frame(ws))["type"] == "hello"
        assert (
            a.webchat.connected(visitor["visitor"]),
            b.webchat.connected(visitor["visitor"]),
        ) == (
            1,
            0,
        )
        frames = await _say(ws, "n1", "how do I connect to the vpn")
        settled = await _settled(b)
        first = [row.id for row in settled]
        assert [row.status for row in settled] == ["sent"] * len(first)
        # a second question: its replies come after the first ones through the same
        # path (B's notifications in order, one consumer on A), so once they are here,
        # every frame for the first question has been pushed, and pushed once
        frames += await _say(ws, "n2", "how do I reset my password")
        if not any(f.get("type") == "message" and f["id"] not in first for f in frames):
            frames += await frames_until(
                ws, lambda f: f.get("type") == "message" and f["id"] not in first, timeout=WAIT
            )
    pushed = [f["id"] for f in _messages(frames)]
    later = next(i for i, outbox_id in enumerate(pushed) if outbox_id not in first)
    assert sorted(pushed[:later]) == first  # each reply to n1 once, none missing
    answer = _messages(frames)[0]
    assert answer["author"] == "bot" and "vpn" in answer["markdown"].lower()
    assert answer["message_id"] is not None  # what the widget deduplicates by


async def test_a_batch_of_replies_crosses_over_in_one_notice(nodes: tuple[Node, Node]) -> None:
    """Several visitors on A ask at once; B's dispatcher sends all the replies, telling
    A about each batch in one notice, and every visitor gets its answer once."""
    a, b = nodes
    sessions = [await a.web.session() for _ in range(4)]
    async with contextlib.AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(a.web.connect(s["visitor"], s["token"]))
            for s in sessions
        ]
        for ws in sockets:
            await next_frame(ws, kind="hello")
        async with a.runtime.core.events.subscribe(cluster=True, kinds=[PEER_OUTBOUND]) as heard:
            await asyncio.gather(
                *(_say(ws, f"q{i}", "how do I connect to the vpn") for i, ws in enumerate(sockets))
            )
            rows = await _settled(b)
            notices = []
            while len(sum((n.data["sends"] for n in notices), [])) < len(rows):
                notices.append(await asyncio.wait_for(heard.get(), WAIT))
        named = sorted(entry[0] for n in notices for entry in n.data["sends"])
        assert named == [row.id for row in rows]  # each reply named once
        assert len(notices) < len(rows)  # in batches, not one notice per reply
        for ws in sockets:  # "did this help?" is each turn's last frame
            await frames_until(
                ws, lambda f: "Did this help?" in f.get("markdown", ""), timeout=WAIT
            )


async def _agent_on_b_visitor_on_a(a: Node, b: Node) -> tuple[Any, dict[str, Any]]:
    """An agent logged into node B's console and a web chat session on node A."""
    await b.runtime.core.agents.add_agent("ana", password=AGENT_PASSWORD, display_name="Ana Agent")
    return await b.agent("ana"), await a.web.session()


async def test_the_console_on_one_node_follows_and_answers_a_visitor_on_the_other(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    agent, visitor = await _agent_on_b_visitor_on_a(a, b)
    async with (
        agent.connect() as live,
        a.web.connect(visitor["visitor"], visitor["token"]) as ws,
    ):
        assert (await next_frame(live))["type"] == "hello"
        await next_frame(ws, kind="hello")
        await _say(ws, "h1", "talk to a human")
        # the manager on A published it; only A's bus had it, B's console hears it
        [cid] = await asyncio.wait_for(_changed(live), WAIT)
        queue = (await agent.http.get("/agent/api/queue")).json()["queue"]
        assert [(c["id"], c["state"]) for c in queue] == [(cid, "queued")]

        assert (await agent.post(f"/agent/api/conversations/{cid}/claim")).status_code == 200
        await frames_until(
            ws, lambda f: f.get("type") == "message" and "Ana Agent" in f["markdown"], timeout=WAIT
        )
        await _agent_reply_reaches(agent, cid, "Hi from the other node.", ws)
        # and a claim made on B reaches a console on A
        other = await a.agent("ana")
        async with other.connect() as live_on_a:
            assert (await next_frame(live_on_a))["type"] == "hello"
            assert (await agent.post(f"/agent/api/conversations/{cid}/resolve")).status_code == 200
            assert cid in await asyncio.wait_for(_changed(live_on_a), WAIT)


async def _changed(ws: ClientConnection) -> list[int]:
    """The conversations the next ``changed`` frame names."""
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("type") == "changed":
            return list(frame["conversations"])


async def test_a_dropped_listen_connection_resyncs_sockets_and_consoles_and_delivery_resumes(
    nodes: tuple[Node, Node], pg_database_url: str
) -> None:
    a, b = nodes
    await a.runtime.core.agents.add_agent("ana", password=AGENT_PASSWORD, display_name="Ana Agent")
    console_on_a = await a.agent("ana")
    agent_on_b = await b.agent("ana")
    visitor = await a.web.session()
    cluster = a.runtime.core.cluster
    assert cluster is not None
    async with (
        console_on_a.connect() as live,
        a.web.connect(visitor["visitor"], visitor["token"]) as ws,
    ):
        await next_frame(live, kind="hello")
        await next_frame(ws, kind="hello")
        await _say(ws, "d1", "talk to a human")
        await _settled(b)
        cid = (await agent_on_b.http.get("/agent/api/queue")).json()["queue"][0]["id"]

        killed = cluster.notifications.listener_pid
        assert killed is not None
        admin = Database(pg_database_url)
        try:
            async with admin.engine.connect() as connection:
                result = await connection.exec_driver_sql(f"SELECT pg_terminate_backend({killed})")
                assert result.scalar() is True
        finally:
            await admin.dispose()
        # notifications sent while A was away are lost: both surfaces are told to re-read
        await frames_until(ws, lambda f: f.get("type") == "resync", timeout=WAIT)
        await frames_until(live, lambda f: f.get("type") == "resync", timeout=WAIT)
        assert cluster.notifications.listener_pid not in (None, killed)

        assert (await agent_on_b.post(f"/agent/api/conversations/{cid}/claim")).status_code == 200
        await _agent_reply_reaches(agent_on_b, cid, "Still here after the drop.", ws)


async def test_a_reply_to_a_visitor_with_no_open_socket_waits_in_the_history(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    agent, visitor = await _agent_on_b_visitor_on_a(a, b)
    async with a.web.connect(visitor["visitor"], visitor["token"]) as ws:
        await next_frame(ws, kind="hello")
        await _say(ws, "g1", "talk to a human")
    async with asyncio.timeout(WAIT):  # the server side has seen the socket close
        while a.webchat.connected(visitor["visitor"]):
            await asyncio.sleep(0.02)
    await _settled(b)
    cid = (await agent.http.get("/agent/api/queue")).json()["queue"][0]["id"]
    assert (await agent.post(f"/agent/api/conversations/{cid}/claim")).status_code == 200
    reply = await agent.post(f"/agent/api/conversations/{cid}/reply", {"text": "Back later?"})
    assert reply.status_code == 200
    rows = await _settled(b)
    assert [row.status for row in rows] == ["sent"] * len(rows)
    for node in (a, b):  # whichever node the widget reconnects to
        history = (await node.web.http.get("/webchat/history", params=visitor)).json()
        assert history["messages"][-1]["markdown"] == "Back later?"
