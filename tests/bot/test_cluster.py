"""Conversation events across nodes on one real PostgreSQL (LISTEN/NOTIFY): two event
buses, each linked through its own listen connection, as two nodes would be."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from bot.cluster import CHANNEL, ClusterEvents
from bot.errors import RateLimited
from bot.events import RESYNC, ConversationEvent, EventBus
from bot.main import build_core
from knowledge import KnowledgeBase
from storage.notify import asyncpg_dsn
from tests.conftest import make_settings

WAIT = 20.0  # generous: these wait for events, they do not measure speed


async def _next(queue: asyncio.Queue[ConversationEvent]) -> ConversationEvent:
    return await asyncio.wait_for(queue.get(), WAIT)


async def _admin(url: str, sql: str, *args: object) -> object:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await connection.fetchval(sql, *args)
    finally:
        await connection.close()


@pytest.fixture
async def nodes(pg_database_url: str) -> AsyncIterator[tuple[ClusterEvents, ClusterEvents]]:
    a = ClusterEvents(EventBus(), pg_database_url, min_backoff=0.05, max_backoff=0.5)
    b = ClusterEvents(EventBus(), pg_database_url, min_backoff=0.05, max_backoff=0.5)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


async def test_an_event_published_on_one_node_reaches_cluster_subscribers_on_the_other(
    nodes: tuple[ClusterEvents, ClusterEvents],
) -> None:
    a, b = nodes
    async with (
        a.bus.subscribe(cluster=True) as on_a,
        b.bus.subscribe(cluster=True) as on_b,
        b.bus.subscribe() as on_b_local_only,
    ):
        a.bus.publish(ConversationEvent("message", 7, {"message_id": 11, "direction": "in"}))
        a.bus.publish(ConversationEvent("state", 7, {"state": "agent", "agent_id": 3}))
        first, second = await _next(on_b), await _next(on_b)
        assert (first.kind, first.conversation_id, first.data, first.origin) == (
            "message",
            7,
            {"message_id": 11, "direction": "in"},
            a.bus.node_id,
        )
        assert (second.kind, second.data["agent_id"]) == ("state", 3)
        # B answers after it saw A's events; A's own echoes reached A's listener before
        # B's event did (one connection, commit order), and were skipped
        b.bus.publish(ConversationEvent("delivered", 7, {"outbox_id": 5}))
        seen_on_a = [await _next(on_a) for _ in range(3)]
        assert [(e.kind, e.origin) for e in seen_on_a] == [
            ("message", None),
            ("state", None),
            ("delivered", b.bus.node_id),
        ]
        assert on_a.empty()
        # the local-only subscriber on B saw B's own event and nothing from A
        assert (await _next(on_b_local_only)).kind == "delivered"
        assert on_b_local_only.empty()


async def test_announce_tells_only_the_other_nodes_and_returns_once_sent(
    nodes: tuple[ClusterEvents, ClusterEvents],
) -> None:
    a, b = nodes
    async with a.bus.subscribe(cluster=True) as on_a, b.bus.subscribe(cluster=True) as on_b:
        await a.bus.announce(ConversationEvent("webchat.outbound", 9, {"outbox_id": 40}))
        got = await _next(on_b)
        assert (got.kind, got.data, got.origin) == (
            "webchat.outbound",
            {"outbox_id": 40},
            a.bus.node_id,
        )
        b.bus.publish(ConversationEvent("state", 9, {}))  # a barrier through A's listener
        assert (await _next(on_a)).origin == b.bus.node_id  # and no announce of A's own


async def test_a_killed_listen_connection_reconnects_resyncs_and_delivers_again(
    nodes: tuple[ClusterEvents, ClusterEvents], pg_database_url: str
) -> None:
    a, b = nodes
    async with b.bus.subscribe(cluster=True) as on_b, b.bus.subscribe() as b_local:
        killed_pid = b.notifications.listener_pid
        assert killed_pid is not None
        assert await _admin(pg_database_url, "SELECT pg_terminate_backend($1)", killed_pid)
        resync = await _next(on_b)
        assert (resync.kind, resync.data) == (RESYNC, {"reason": "reconnected"})
        assert b.notifications.listener_pid not in (None, killed_pid)
        assert b.notifications.reconnects == 1
        a.bus.publish(ConversationEvent("message", 3, {"message_id": 99}))
        after = await _next(on_b)
        assert (after.kind, after.data, after.origin) == (
            "message",
            {"message_id": 99},
            a.bus.node_id,
        )
        assert b_local.empty()  # a resync is for cluster subscribers only


async def test_a_missed_notification_makes_the_receiver_resync_and_a_repeat_is_dropped(
    nodes: tuple[ClusterEvents, ClusterEvents], pg_database_url: str
) -> None:
    _, b = nodes

    def raw(sequence: int, kind: str) -> str:
        return json.dumps({"n": "elsewhere", "s": sequence, "k": kind, "c": 1, "d": {}})

    async with b.bus.subscribe(cluster=True) as on_b:
        connection = await asyncpg.connect(asyncpg_dsn(pg_database_url))
        try:
            for payload in (raw(1, "one"), raw(3, "three"), raw(3, "three"), raw(4, "four")):
                await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
            await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, "not json")
            await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, raw(5, "five"))
        finally:
            await connection.close()
        kinds = [(await _next(on_b)).kind for _ in range(5)]
    # 2 was never seen: resync before 3; the second 3 is a duplicate; garbage is skipped
    assert kinds == ["one", RESYNC, "three", "four", "five"]


async def test_announce_while_the_link_is_down_asks_the_caller_to_hold_off(
    pg_database_url: str,
) -> None:
    cluster = ClusterEvents(EventBus(), pg_database_url)
    await cluster.start()
    await cluster.notifications.stop()  # the link is down, the bus still linked
    try:
        with pytest.raises(RateLimited):
            await cluster.announce(ConversationEvent("webchat.outbound", 1, {"outbox_id": 1}))
    finally:
        await cluster.stop()
    assert not cluster.bus.clustered


async def test_an_oversized_event_still_tells_which_conversation_changed(
    nodes: tuple[ClusterEvents, ClusterEvents],
) -> None:
    a, b = nodes
    async with b.bus.subscribe(cluster=True) as on_b:
        a.bus.publish(ConversationEvent("alert", 5, {"detail": "x" * 9000}))
        got = await _next(on_b)
    assert (got.kind, got.conversation_id, got.data) == ("alert", 5, {"truncated": True})


async def test_event_data_arrives_as_sent_whatever_it_holds(
    nodes: tuple[ClusterEvents, ClusterEvents],
) -> None:
    a, b = nodes
    data = {
        "text": "Grüße, 東京 — naïve café ☕",
        7: "an int key arrives as a string key",
        "at": datetime(2026, 12, 2, 9, 30, tzinfo=UTC),  # travels as ISO 8601 text
    }
    # each event big enough that the three need two notifications (bytes, not characters)
    big = "ü" * 3000
    async with b.bus.subscribe(cluster=True) as on_b:
        a.bus.publish(ConversationEvent("message", 1, data))
        for n in range(3):
            a.bus.publish(ConversationEvent("note", n, {"body": big}))
        got = [await _next(on_b) for _ in range(4)]
    assert got[0].data == {
        "text": "Grüße, 東京 — naïve café ☕",
        "7": "an int key arrives as a string key",
        "at": "2026-12-02T09:30:00+00:00",
    }
    assert [e.data for e in got[1:]] == [{"body": big}] * 3


async def test_the_link_exists_on_postgresql_only(
    pg_database_url: str, tmp_path: Path, sample_kb: KnowledgeBase
) -> None:
    on_pg = build_core(make_settings(tmp_path, database_url=pg_database_url), knowledge=sample_kb)
    on_sqlite = build_core(make_settings(tmp_path), knowledge=sample_kb)
    try:
        assert isinstance(on_pg.cluster, ClusterEvents)
        assert on_sqlite.cluster is None
        assert not on_pg.events.clustered  # linked only once started
    finally:
        await on_pg.db.dispose()
        await on_sqlite.db.dispose()


async def test_events_of_one_loop_turn_travel_together_in_order(
    nodes: tuple[ClusterEvents, ClusterEvents], pg_database_url: str
) -> None:
    a, b = nodes
    seen: list[str] = []
    listener = await asyncpg.connect(asyncpg_dsn(pg_database_url))
    await listener.add_listener(CHANNEL, lambda *args: seen.append(args[-1]))
    try:
        async with b.bus.subscribe(cluster=True) as on_b:
            for i in range(300):  # about 12 KB of events: more than one notification holds
                a.bus.publish(ConversationEvent("message", i, {"message_id": 1000 + i}))
            got = [await _next(on_b) for _ in range(300)]
            b.bus.publish(ConversationEvent("state", 0, {}))  # a barrier on the raw listener
            async with asyncio.timeout(WAIT):
                while not any(json.loads(p)["n"] == b.bus.node_id for p in seen):
                    await asyncio.sleep(0.01)
    finally:
        await listener.close()
    assert [(e.conversation_id, e.data["message_id"]) for e in got] == [
        (i, 1000 + i) for i in range(300)
    ]
    from_a = [json.loads(p) for p in seen if json.loads(p)["n"] == a.bus.node_id]
    assert 2 <= len(from_a) <= 4  # packed, each under the payload limit
    assert all(len(p.encode()) < 8000 for p in seen)
    assert [body["s"] for body in from_a] == sorted(body["s"] for body in from_a)
