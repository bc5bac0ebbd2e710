"""The widget's server side over real sockets: round trip, dedupe, origin, history,
identity, rate limit (R33–R36, R42)."""

from __future__ import annotations

import json
import re

import pytest
from websockets.exceptions import InvalidStatus

from channels.webchat.convert import identity_hash, safe_html
from tests.channels.webchat.webchat_harness import (
    FOREIGN_ORIGIN,
    IDENTITY_SECRET,
    INTRANET_ORIGIN,
    WebDesk,
    frames_until,
    next_frame,
)


def _is_feedback(frame: dict) -> bool:
    return frame.get("type") == "message" and any(
        b["value"].startswith("kb:no:") for b in frame.get("buttons", [])
    )


async def test_kb_question_round_trip_gets_answer_and_buttons(web: WebDesk) -> None:
    s = await web.session()
    async with web.connect(s["visitor"], s["token"]) as ws:
        hello = await next_frame(ws)
        assert hello == {"type": "hello", "verified": False}
        await ws.send(
            json.dumps(
                {"type": "message", "client_id": "c1", "text": "how do I connect to the vpn"}
            )
        )
        frames = await frames_until(ws, _is_feedback)
    assert {"type": "ack", "client_id": "c1"} in frames
    messages = [f for f in frames if f["type"] == "message"]
    answer = messages[0]
    assert answer["author"] == "bot"
    assert answer["id"] is not None and answer["html"].startswith("<")
    assert "vpn" in answer["markdown"].lower()
    labels = [b["label"] for b in messages[-1]["buttons"]]
    assert "No" in labels


async def test_resent_client_id_is_answered_once(web: WebDesk) -> None:
    s = await web.session()
    frame = json.dumps({"type": "message", "client_id": "same-1", "text": "hello"})
    async with web.connect(s["visitor"], s["token"]) as ws:
        await next_frame(ws, kind="hello")
        await ws.send(frame)
        await frames_until(ws, lambda f: f.get("type") == "ack")
        await web.core.dispatcher.drain()
        before = (await web.http.get("/webchat/history", params=s)).json()["messages"]
        replies = sum(1 for m in before if m["direction"] == "out")
        seen = 0
        while seen < replies:  # the first answer's frames, already pushed
            seen += (await next_frame(ws))["type"] == "message"
        await ws.send(frame)  # the widget's resend after a reconnect
        again = await frames_until(ws, lambda f: f.get("type") == "ack")
        await web.core.dispatcher.drain()
    after = (await web.http.get("/webchat/history", params=s)).json()["messages"]
    assert [f["type"] for f in again if f["type"] == "message"] == []
    assert any(m["direction"] == "out" for m in before)
    assert after == before
    assert [m["client_id"] for m in after if m["direction"] == "in"] == ["same-1"]


@pytest.mark.parametrize("origin", [FOREIGN_ORIGIN, "null", "http://127.0.0.1.evil.example"])
async def test_foreign_origin_is_refused_before_accept(web: WebDesk, origin: str) -> None:
    s = await web.session()
    with pytest.raises(InvalidStatus) as refused:
        async with web.connect(s["visitor"], s["token"], origin=origin):
            pass
    assert refused.value.response.status_code == 403


async def test_allowed_origin_and_own_origin_are_accepted(web: WebDesk) -> None:
    s = await web.session()
    for origin in (INTRANET_ORIGIN, web.origin):
        async with web.connect(s["visitor"], s["token"], origin=origin) as ws:
            assert (await next_frame(ws))["type"] == "hello"


async def test_missing_or_forged_token_is_refused(web: WebDesk) -> None:
    a = await web.session()
    b = await web.session()
    for visitor, token in ((a["visitor"], ""), (a["visitor"], b["token"]), (a["visitor"], "x.y")):
        with pytest.raises(InvalidStatus) as refused:
            async with web.connect(visitor, token):
                pass
        assert refused.value.response.status_code == 403


async def test_visitor_cannot_read_another_visitors_history(web: WebDesk) -> None:
    a = await web.session()
    b = await web.session()
    async with web.connect(a["visitor"], a["token"]) as ws:
        await next_frame(ws, kind="hello")
        await ws.send(
            json.dumps({"type": "message", "client_id": "a1", "text": "my secret printer"})
        )
        await frames_until(ws, lambda f: f.get("type") == "ack")
    own = await web.http.get("/webchat/history", params=a)
    assert own.status_code == 200
    assert any("secret printer" in m["markdown"] for m in own.json()["messages"])
    stolen = await web.http.get(
        "/webchat/history", params={"visitor": a["visitor"], "token": b["token"]}
    )
    unknown = await web.http.get(
        "/webchat/history", params={"visitor": "Z" * 32, "token": b["token"]}
    )
    assert stolen.status_code == unknown.status_code == 404
    assert stolen.json() == unknown.json()  # no hint that A's conversation exists


async def test_valid_identity_hash_marks_sender_verified(web: WebDesk) -> None:
    email = "Alice@Example.com"
    s = await web.session(email=email, hash=identity_hash(IDENTITY_SECRET, email))
    assert s["verified"] is True
    async with web.connect(s["visitor"], s["token"]) as ws:
        assert (await next_frame(ws))["verified"] is True
        await ws.send(json.dumps({"type": "message", "client_id": "i1", "text": "hello"}))
        await frames_until(ws, lambda f: f.get("type") == "ack")
    from storage.repositories import People

    async with web.core.db.read() as session:
        identity = await People(session).identity("webchat", s["visitor"])
        assert identity is not None
        person = await People(session).get(identity.person_id)
    assert person is not None and person.email == "alice@example.com"


async def test_wrong_identity_hash_is_anonymous(web: WebDesk) -> None:
    s = await web.session(email="alice@example.com", hash="0" * 64)
    assert s["verified"] is False
    async with web.connect(s["visitor"], s["token"]) as ws:
        assert (await next_frame(ws))["verified"] is False
        await ws.send(json.dumps({"type": "message", "client_id": "w1", "text": "hello"}))
        await frames_until(ws, lambda f: f.get("type") == "ack")
    from storage.repositories import People

    async with web.core.db.read() as session:
        identity = await People(session).identity("webchat", s["visitor"])
        assert identity is not None
        person = await People(session).get(identity.person_id)
        assert await People(session).by_email("alice@example.com") is None
    assert person is not None and person.email is None


@pytest.mark.webchat_settings(webchat_require_identity=True)
async def test_required_identity_unverified_visitor_gets_no_history(web: WebDesk) -> None:
    s = await web.session(email="alice@example.com", hash="f" * 64)
    async with web.connect(s["visitor"], s["token"]) as ws:
        await next_frame(ws, kind="hello")
        await ws.send(json.dumps({"type": "message", "client_id": "r1", "text": "hello"}))
        await frames_until(ws, lambda f: f.get("type") == "message")
    response = await web.http.get("/webchat/history", params=s)
    assert response.status_code == 200
    assert response.json() == {"messages": [], "verified": False}


async def test_typed_email_is_not_an_identity(web: WebDesk) -> None:
    # Alice, verified, opens a ticket-worthy conversation
    email = "alice@example.com"
    alice = await web.session(email=email, hash=identity_hash(IDENTITY_SECRET, email))
    async with web.connect(alice["visitor"], alice["token"]) as ws:
        await next_frame(ws, kind="hello")
        await ws.send(
            json.dumps(
                {"type": "message", "client_id": "a1", "text": "my laptop screen is cracked"}
            )
        )
        await frames_until(ws, lambda f: f.get("type") == "ack")
    # Mallory, anonymous, types Alice's address and asks for "her" tickets
    mallory = await web.session(email=email)
    assert mallory["verified"] is False
    async with web.connect(mallory["visitor"], mallory["token"]) as ws:
        await next_frame(ws, kind="hello")
        for i, text in enumerate([f"I am {email}", "my tickets"]):
            await ws.send(json.dumps({"type": "message", "client_id": f"m{i}", "text": text}))
            await frames_until(ws, lambda f: f.get("type") == "ack")
        await web.core.dispatcher.drain()
    history = (await web.http.get("/webchat/history", params=mallory)).json()["messages"]
    shown = "\n".join(m["markdown"] for m in history)
    assert "laptop screen" not in shown and "INC-" not in shown
    from storage.repositories import People

    async with web.core.db.read() as session:
        identity = await People(session).identity("webchat", mallory["visitor"])
        assert identity is not None
        person = await People(session).get(identity.person_id)
    assert person is not None and person.email is None


@pytest.mark.webchat_settings(webchat_rate_per_minute=30)
async def test_flooding_visitor_is_slowed_down_and_others_are_not(web: WebDesk) -> None:
    flood = await web.session()
    calm = await web.session()
    async with web.connect(flood["visitor"], flood["token"]) as ws:
        await next_frame(ws, kind="hello")
        for i in range(60):
            await ws.send(json.dumps({"type": "message", "client_id": f"f{i}", "text": f"x{i}"}))
        outcome: dict[str, str] = {}
        while len(outcome) < 60:  # one ack or error per frame, replies in between
            frame = await next_frame(ws)
            if frame["type"] in ("ack", "error"):
                outcome[frame["client_id"]] = frame.get("code", "ack")
    slowed = [cid for cid, code in outcome.items() if code == "slow_down"]
    accepted = [cid for cid, code in outcome.items() if code == "ack"]
    assert len(slowed) >= 40 and 1 <= len(accepted) <= 20
    async with web.connect(calm["visitor"], calm["token"]) as ws:
        await next_frame(ws, kind="hello")
        await ws.send(json.dumps({"type": "message", "client_id": "ok", "text": "hello"}))
        frame = await next_frame(ws)
        while frame["type"] == "message":
            frame = await next_frame(ws)
        assert frame == {"type": "ack", "client_id": "ok"}


async def test_oversized_message_is_refused(web: WebDesk) -> None:
    s = await web.session()
    async with web.connect(s["visitor"], s["token"]) as ws:
        await next_frame(ws, kind="hello")
        await ws.send(json.dumps({"type": "message", "client_id": "big", "text": "a" * 4001}))
        frame = await next_frame(ws, kind="error")
    assert frame["code"] == "too_long" and frame["client_id"] == "big"


async def test_static_widget_files_are_served(web: WebDesk) -> None:
    js = await web.http.get("/webchat/widget.js")
    css = await web.http.get("/webchat/widget.css")
    assert js.status_code == css.status_code == 200
    assert js.headers["content-type"].startswith("text/javascript")
    # the only HTML the widget inserts is the server's sanitised rendering
    assignments = re.findall(r"innerHTML\s*=\s*([^;]+);", js.text)
    assert assignments == ["msg.html"]
    assert "insertAdjacentHTML" not in js.text and "document.write" not in js.text


def test_safe_html_makes_markup_inert() -> None:
    rendered = safe_html(
        "<img src=x onerror=alert(1)> [x](javascript:alert(1)) [ok](https://a.example)"
    )
    assert "<img" not in rendered and "&lt;img" in rendered
    assert 'href="javascript' not in rendered
    assert (
        'href="https://a.example"' in rendered and 'rel="noopener noreferrer nofollow"' in rendered
    )
