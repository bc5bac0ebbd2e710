"""The widget's core round trip on both databases (SQLite and the real PostgreSQL): a KB
question over the socket, the answer with "did this help?", and the history read back."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from knowledge import KnowledgeBase
from storage.db import Database
from tests.channels.webchat.webchat_harness import frames_until, next_frame, start_web_desk


async def test_widget_round_trip_on_each_database(
    database: Database, tmp_path: Path, sample_kb: KnowledgeBase
) -> None:
    core, server = await start_web_desk(tmp_path, knowledge=sample_kb, database=database)
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10, trust_env=False) as http:
            s = (await http.post("/webchat/session", headers={"Origin": base})).json()
            url = (
                f"ws://127.0.0.1:{server.port}/webchat/ws?visitor={s['visitor']}&token={s['token']}"
            )
            async with connect(url, additional_headers={"Origin": base}, open_timeout=5) as ws:
                assert (await next_frame(ws))["type"] == "hello"
                await ws.send(
                    json.dumps(
                        {
                            "type": "message",
                            "client_id": "pg-1",
                            "text": "how do I connect to the vpn",
                        }
                    )
                )
                frames = await frames_until(
                    ws,
                    lambda f: (
                        f.get("type") == "message"
                        and any(b["value"].startswith("kb:no:") for b in f.get("buttons", []))
                    ),
                )
            history = (
                await http.get(
                    "/webchat/history", params={"visitor": s["visitor"], "token": s["token"]}
                )
            ).json()["messages"]
    finally:
        await core.dispatcher.stop()
        await server.stop()
    assert {"type": "ack", "client_id": "pg-1"} in frames
    answer = next(f for f in frames if f["type"] == "message")
    assert answer["author"] == "bot" and "vpn" in answer["markdown"].lower()
    assert history[0]["client_id"] == "pg-1"
    assert [m["direction"] for m in history][:2] == ["in", "out"]
