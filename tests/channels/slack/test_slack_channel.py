"""The live Slack channel: R1–R16 and the transcripts, on the fakes and the real core."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.types import HandleResult, Inbound
from channels.slack.convert import CLAIM_ACTION, HAND_BACK_ACTION, RESOLVE_ACTION
from knowledge import KnowledgeBase
from storage.db import Database
from storage.models import Conversation, InboxRow, OutboxRow, Ticket
from tests.channels.slack.fake_slack import FakeSlackWebApi
from tests.channels.slack.harness import (
    ALICE,
    ALICE_DM,
    TRIAGE,
    SlackDesk,
    blocks_text,
    make_desk,
)
from tests.channels.slack.signing import SlackRequestSigner, slash_command_form


@pytest.fixture
async def desk(
    database: Database,
    tmp_path: Path,
    fake_slack: FakeSlackWebApi,
    slack_signer: SlackRequestSigner,
    sample_kb: KnowledgeBase,
) -> AsyncIterator[SlackDesk]:
    desk = await make_desk(database, tmp_path, fake_slack, slack_signer, knowledge=sample_kb)
    await desk.slack.start()
    try:
        yield desk
    finally:
        await desk.slack.stop()
        await desk.http.aclose()


async def count(desk: SlackDesk, model: type) -> int:
    async with desk.core.db.read() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def conversation_of(desk: SlackDesk, conversation_id: int) -> Conversation:
    async with desk.core.db.read() as session:
        found = await session.get(Conversation, conversation_id)
        assert found is not None
        return found


# --------------------------------------------------------------------------------------
# signatures (R1–R5), through bolt's own verification


async def test_r1_valid_signature_is_processed_once_and_answered_from_the_kb(
    desk: SlackDesk,
) -> None:
    await desk.dm("how do I set up the company email on my iphone")
    await desk.settle()
    posts = desk.posts_to(ALICE_DM)
    # one message: the article, "Did this help?" and its buttons beneath
    assert len(posts) == 1
    assert "Set up work email on your phone" in blocks_text(posts[0])
    assert "Did this help?" in blocks_text(posts[0])
    actions = [b for b in posts[0]["blocks"] if b["type"] == "actions"]
    assert [e["text"]["text"] for e in actions[0]["elements"]] == ["Yes, that helped", "No"]
    assert await count(desk, InboxRow) == 1
    # the person is linked by the email Slack verified (users.info)
    async with desk.core.db.read() as session:
        conversation = (await session.execute(select(Conversation))).scalar_one()
    from storage.repositories import People

    async with desk.core.db.read() as session:
        person = await People(session).get(conversation.person_id)
    assert person is not None and person.email == "alice@example.com"


SQLITE_ONLY = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


@SQLITE_ONLY
@pytest.mark.parametrize(
    "mangle",
    [
        lambda r: r.with_headers(X_Slack_Signature="v0=" + "0" * 64),
        lambda r: r.without_header("X-Slack-Signature"),
        lambda r: r.without_header("X-Slack-Request-Timestamp"),
        lambda r: r.with_headers(X_Slack_Request_Timestamp="tomorrow"),  # R4
        lambda r: r.tampered(r.body.replace(b"vpn", b"VPN")),  # R5
    ],
    ids=["bad-signature", "no-signature", "no-timestamp", "r4-non-numeric", "r5-tampered"],
)
async def test_r2_r4_r5_bad_requests_are_401_without_side_effects(
    desk: SlackDesk, mangle: object
) -> None:
    request = desk.signer.event(desk.dm_event("the vpn is down"), event_id="EvBAD")
    response = await desk.post(mangle(request))  # type: ignore[operator]
    assert response.status_code == 401
    await desk.settle()
    assert await count(desk, InboxRow) == 0
    assert desk.fake.calls_to("chat.postMessage") == []


@SQLITE_ONLY
async def test_r3_timestamp_window(desk: SlackDesk) -> None:
    now = int(time.time())
    late = desk.signer.event(desk.dm_event("hello"), event_id="EvLATE", timestamp=now - 301)
    assert (await desk.post(late)).status_code == 401
    fine = desk.signer.event(desk.dm_event("hello"), event_id="EvFINE", timestamp=now - 299)
    assert (await desk.post(fine)).status_code == 200
    assert await count(desk, InboxRow) == 1


@SQLITE_ONLY
async def test_r3_the_verification_clock_is_injected(
    database: Database,
    tmp_path: Path,
    fake_slack: FakeSlackWebApi,
    slack_signer: SlackRequestSigner,
    sample_kb: KnowledgeBase,
) -> None:
    import dataclasses

    from channels.slack.adapter import SlackChannel

    desk = await make_desk(database, tmp_path, fake_slack, slack_signer, knowledge=sample_kb)
    frozen = 1_700_000_000
    slack = SlackChannel(
        dataclasses.replace(desk.slack.config, now=lambda: frozen), desk.slack.access
    )
    import httpx
    from fastapi import FastAPI

    app = FastAPI()
    app.include_router(slack.router())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for offset, status in ((299, 200), (301, 401), (-299, 200), (-301, 401)):
            request = slack_signer.event(
                desk.dm_event("hi"), event_id=f"Ev{offset}", timestamp=frozen - offset
            )
            response = await c.post("/slack/events", content=request.body, headers=request.headers)
            assert response.status_code == status, offset
    await desk.http.aclose()


# --------------------------------------------------------------------------------------
# durable path (R6–R8)


async def test_r6_four_deliveries_one_concurrent_with_a_slow_first_run(desk: SlackDesk) -> None:
    event = desk.dm_event("how do I set up the company email on my iphone")
    desk.fake.answer_slowly("users.info", 0.3)  # the first delivery is slow to ack
    first = asyncio.create_task(desk.post(desk.signer.event(event, event_id="EvSAME")))
    retries = [
        desk.post(
            desk.signer.event(event, event_id="EvSAME", retry_num=n, retry_reason="http_timeout")
        )
        for n in (1, 2, 3)
    ]
    responses = await asyncio.gather(first, *retries)
    assert [r.status_code for r in responses] == [200] * 4
    await asyncio.gather(desk.settle(), desk.settle())
    assert await count(desk, InboxRow) == 1
    assert len(desk.posts_to(ALICE_DM)) == 1  # one answer, with its "did this help?"


async def test_r7_slow_handler_still_acks_fast_and_finishes_from_the_queue(
    database: Database,
    tmp_path: Path,
    fake_slack: FakeSlackWebApi,
    slack_signer: SlackRequestSigner,
    sample_kb: KnowledgeBase,
) -> None:
    gate, done = asyncio.Event(), asyncio.Event()
    holder: dict[str, SlackDesk] = {}

    async def slow(inbound: Inbound) -> HandleResult:
        await gate.wait()
        result = await holder["desk"].core.manager.handle(inbound)
        done.set()
        return result

    desk = await make_desk(
        database, tmp_path, fake_slack, slack_signer, knowledge=sample_kb, handler=slow
    )
    holder["desk"] = desk
    await desk.slack.start()
    await desk.worker.start()
    try:
        started = time.monotonic()
        await desk.dm("how do I set up the company email on my iphone")
        assert time.monotonic() - started < 3.0
        assert desk.posts_to(ALICE_DM) == []
        gate.set()
        await asyncio.wait_for(done.wait(), 10)
        await desk.core.dispatcher.drain()
        assert len(desk.posts_to(ALICE_DM)) == 1
    finally:
        await desk.worker.stop()
        await desk.slack.stop()
        await desk.http.aclose()


async def test_r8_a_handler_that_raises_is_retried_from_our_queue(
    database: Database,
    tmp_path: Path,
    fake_slack: FakeSlackWebApi,
    slack_signer: SlackRequestSigner,
    sample_kb: KnowledgeBase,
) -> None:
    holder: dict[str, SlackDesk] = {}
    failures = [RuntimeError("listener blew up")]

    async def flaky(inbound: Inbound) -> HandleResult:
        if failures:
            raise failures.pop()
        return await holder["desk"].core.manager.handle(inbound)

    desk = await make_desk(
        database, tmp_path, fake_slack, slack_signer, knowledge=sample_kb, handler=flaky
    )
    holder["desk"] = desk
    await desk.slack.start()
    try:
        await desk.dm("how do I set up the company email on my iphone")
        assert await desk.worker.run_once() == 1
        assert desk.posts_to(ALICE_DM) == []
        async with desk.core.db.read() as session:
            row = (await session.execute(select(InboxRow))).scalar_one()
        assert row.status == "pending" and row.attempts == 1 and "blew up" in (row.last_error or "")
        desk.clock.advance(seconds=5)
        await desk.settle()
        assert len(desk.posts_to(ALICE_DM)) == 1
    finally:
        await desk.slack.stop()
        await desk.http.aclose()


# --------------------------------------------------------------------------------------
# agents: card, claim, relay both ways, note, resolve (R14–R16)


async def escalate_memory_requester(desk: SlackDesk) -> tuple[int, dict[str, object]]:
    """A web-chat-like requester (memory channel) asks for a human → a card in triage."""
    from bot.types import Sender

    inbound = Inbound(
        channel="memory",
        external_id="mem-1",
        sender=Sender("visitor:carol", display_name="Carol <!channel>"),
        text="talk to a human",
        thread_key="dm:carol",
        reply_to={"user": "carol"},
    )
    result = await desk.core.manager.handle(inbound)
    await desk.settle()
    assert result.conversation_id is not None
    return result.conversation_id, desk.card()


async def memory_says(desk: SlackDesk, text: str, n: int) -> None:
    from bot.types import Sender

    await desk.core.manager.handle(
        Inbound(
            channel="memory",
            external_id=f"mem-{n}",
            sender=Sender("visitor:carol", display_name="Carol <!channel>"),
            text=text,
            thread_key="dm:carol",
            reply_to={"user": "carol"},
        )
    )
    await desk.settle()


async def test_transcript_card_claim_relay_note_resolve(desk: SlackDesk) -> None:
    conversation_id, card = await escalate_memory_requester(desk)
    text = blocks_text(card)
    assert f"claim:{conversation_id}" in text and "Carol &lt;!channel&gt;" in text
    assert "<!channel>" not in text
    notes = (await conversation_of(desk, conversation_id)).notes
    assert isinstance(notes.get("slack_card_outbox"), int)

    response = await desk.click(
        f"claim:{conversation_id}", action_id=CLAIM_ACTION, message_ts=str(card["ts"])
    )
    assert response.status_code == 200
    await desk.fake.wait_for_calls("chat.update", 1)
    assert "Claimed by" in blocks_text(desk.card())
    await desk.settle()
    assert any("joined the conversation" in o.markdown for o in desk.memory.to("user", "carol"))

    # the agent's thread reply reaches the requester on their own channel
    await desk.thread_reply("Hi Carol, restarting the VPN gateway now.", thread_ts=str(card["ts"]))
    await desk.settle()
    assert any("restarting the VPN gateway" in o.markdown for o in desk.memory.to("user", "carol"))

    # the requester answers: relayed into the card's thread, escaped (R15)
    await memory_says(desk, "<!channel> it works <https://evil.example|bank>", 2)
    thread = desk.fake.messages_in(TRIAGE, thread_ts=str(card["ts"]))
    relayed = [m for m in thread if m.get("bot_id")]
    assert relayed and "&lt;!channel&gt;" in blocks_text(relayed[-1])
    assert "<!channel>" not in blocks_text(relayed[-1])
    assert "<https://evil" not in blocks_text(relayed[-1])

    # note: stays internal
    before = len(desk.memory.sent)
    await desk.thread_reply("note: gateway was stuck, see PRB later", thread_ts=str(card["ts"]))
    await desk.settle()
    assert len(desk.memory.sent) == before

    await desk.click(
        f"resolve:{conversation_id}", action_id=RESOLVE_ACTION, message_ts=str(card["ts"])
    )
    await desk.fake.wait_for_calls("chat.update", 2)
    assert "Resolved by" in blocks_text(desk.card())
    await desk.settle()
    assert any("as resolved" in o.markdown for o in desk.memory.to("user", "carol"))
    assert (await conversation_of(desk, conversation_id)).state == "bot"


async def test_r14_a_non_agent_is_refused_and_nothing_changes(desk: SlackDesk) -> None:
    conversation_id, card = await escalate_memory_requester(desk)
    for verb, action in (
        ("claim", CLAIM_ACTION),
        ("resolve", RESOLVE_ACTION),
        ("hand_back", HAND_BACK_ACTION),
    ):
        response = await desk.click(
            f"{verb}:{conversation_id}", user=ALICE, action_id=action, message_ts=str(card["ts"])
        )
        assert response.status_code == 200
    assert len(desk.fake.ephemeral) == 3
    assert all(e["user"] == ALICE for e in desk.fake.ephemeral)
    assert (await conversation_of(desk, conversation_id)).state == "queued"
    assert desk.fake.calls_to("chat.update") == []


async def test_r16_a_double_click_is_one_state_change(desk: SlackDesk) -> None:
    conversation_id, card = await escalate_memory_requester(desk)
    clicks = [
        desk.click(f"claim:{conversation_id}", action_id=CLAIM_ACTION, message_ts=str(card["ts"]))
        for _ in range(2)
    ]
    assert [r.status_code for r in await asyncio.gather(*clicks)] == [200, 200]
    await desk.settle()
    joined = [o for o in desk.memory.to("user", "carol") if "joined" in o.markdown]
    assert len(joined) == 1
    assert len(desk.fake.ephemeral) == 1  # the second click is told it is taken


# --------------------------------------------------------------------------------------
# delivery (R11–R13)


async def test_r11_429_pauses_that_channel_then_sends_exactly_once(desk: SlackDesk) -> None:
    desk.fake.fail_next("chat.postMessage", status=429, retry_after=7)
    await desk.dm("how do I set up the company email on my iphone")
    await desk.worker.run_once()
    await desk.core.dispatcher.run_once()
    assert desk.slack.paused_for(ALICE_DM) == pytest.approx(7.0)
    posts_before = len(desk.fake.calls_to("chat.postMessage"))
    # nothing more goes to that channel while paused, even asked directly
    from bot.errors import RateLimited
    from bot.types import Outbound

    with pytest.raises(RateLimited):
        await desk.slack.send(Outbound("slack", {"channel": ALICE_DM}, "hello", outbox_id=999))
    assert len(desk.fake.calls_to("chat.postMessage")) == posts_before
    desk.monotonic.value += 7
    desk.clock.advance(seconds=8)
    await desk.settle()
    assert len(desk.posts_to(ALICE_DM)) == 1


async def test_r12_reset_after_accept_is_reconciled_not_resent(desk: SlackDesk) -> None:
    desk.fake.reset_after_accept("chat.postMessage")
    await desk.dm("how do I set up the company email on my iphone")
    await desk.worker.run_once()
    await desk.core.dispatcher.run_once()
    assert len(desk.posts_to(ALICE_DM)) >= 1
    desk.clock.advance(seconds=30)
    await desk.settle()
    ids = [m["metadata"]["event_payload"]["outbox_id"] for m in desk.posts_to(ALICE_DM)]
    assert ids == [1]  # reconciled: found in the channel's history, not posted again
    assert desk.fake.calls_to("conversations.history")
    async with desk.core.db.read() as session:
        statuses = [r.status for r in (await session.execute(select(OutboxRow))).scalars()]
    assert statuses == ["sent"]


async def test_r12_reconcile_after_a_crash_finds_the_post(desk: SlackDesk) -> None:
    from bot.types import Outbound

    outbound = Outbound("slack", {"channel": ALICE_DM}, "hello", outbox_id=4242)
    assert await desk.slack.reconcile(outbound) is None
    delivery = await desk.slack.send(outbound)
    found = await desk.slack.reconcile(outbound)
    assert found is not None and found.platform_id == delivery.platform_id


async def test_r13_own_and_other_bots_messages_are_ignored(desk: SlackDesk) -> None:
    own = {**desk.dm_event("I am the bot"), "user": "U0DESKBOT", "bot_id": "B0DESKBOT"}
    other = {
        **desk.dm_event("I am a workflow"),
        "user": "U0OTHER",
        "bot_id": "B0OTHER",
        "subtype": "bot_message",
    }
    for n, event in enumerate((own, other)):
        response = await desk.post(desk.signer.event(event, event_id=f"EvBOT{n}"))
        assert response.status_code == 200
    await desk.settle()
    assert await count(desk, InboxRow) == 0
    assert desk.fake.calls_to("chat.postMessage") == []


# --------------------------------------------------------------------------------------
# requester surfaces: modal, /desk, App Home


async def test_modal_submission_opens_a_ticket(desk: SlackDesk) -> None:
    payload = {
        "type": "view_submission",
        "team": {"id": "T0DESK001"},
        "user": {"id": ALICE, "name": "alice"},
        "api_app_id": "A0DESKBOT",
        "view": {
            "id": "V0REPORT1",
            "type": "modal",
            "callback_id": "deskbot_report_issue",
            "private_metadata": json.dumps({"channel": ALICE_DM}),
            "state": {
                "values": {
                    "service": {"service": {"selected_option": {"value": "printing"}}},
                    "description": {"description": {"value": "The printer on floor 3 jams"}},
                    "impact": {"impact": {"selected_option": {"value": "low"}}},
                    "urgency": {"urgency": {"selected_option": {"value": "low"}}},
                }
            },
        },
    }
    response = await desk.post(desk.signer.interaction(payload))
    assert response.status_code == 200
    await desk.settle()
    async with desk.core.db.read() as session:
        tickets = list((await session.execute(select(Ticket))).scalars())
    assert len(tickets) == 1, [blocks_text(m) for m in desk.posts_to(ALICE_DM)]
    assert (tickets[0].service, tickets[0].impact, tickets[0].urgency) == ("printing", 3, 3)
    assert any(tickets[0].number in blocks_text(m) for m in desk.posts_to(ALICE_DM))


async def test_slash_command_and_app_home(desk: SlackDesk) -> None:
    response = await desk.post(desk.signer.slash_command(slash_command_form("")))
    assert response.status_code == 200
    assert desk.fake.views_opened[-1]["view"]["callback_id"] == "deskbot_report_issue"
    response = await desk.post(
        desk.signer.slash_command(slash_command_form("help", trigger_id="t.2"))
    )
    assert response.status_code == 200
    await desk.settle()
    assert desk.posts_to(ALICE_DM)
    event = {
        "type": "app_home_opened",
        "user": ALICE,
        "channel": ALICE_DM,
        "tab": "home",
        "event_ts": "1700000000.000100",
    }
    response = await desk.post(desk.signer.event(event, event_id="EvHOME"))
    assert response.status_code == 200
    view = desk.fake.views_published[ALICE]
    assert "Report an issue" in json.dumps(view)


class _Frames:
    """A web chat socket as the web chat channel sees it: frames in a list."""

    def __init__(self) -> None:
        self.frames: list[dict[str, object]] = []

    async def send_text(self, data: str) -> None:
        self.frames.append(json.loads(data))


async def test_an_agent_in_slack_answers_a_web_chat_visitor_and_back(desk: SlackDesk) -> None:
    """The relay works across channels: the requester is on the real web chat channel."""
    from bot.types import Sender
    from channels.webchat import WebChatChannel

    webchat = WebChatChannel()
    desk.core.registry.add(webchat)
    socket = _Frames()
    await webchat.attach("v-dan", socket)

    def visitor(text: str, n: int) -> Inbound:
        return Inbound(
            channel="webchat",
            external_id=f"v-dan:{n}",
            sender=Sender("visitor:v-dan", display_name="Dan"),
            text=text,
            thread_key="visitor:v-dan",
            reply_to={"visitor": "v-dan"},
        )

    result = await desk.core.manager.handle(visitor("talk to a human", 1))
    await desk.settle()
    conversation_id = result.conversation_id
    card = desk.card()
    await desk.click(f"claim:{conversation_id}", action_id=CLAIM_ACTION, message_ts=str(card["ts"]))
    await desk.fake.wait_for_calls("chat.update", 1)
    await desk.thread_reply("Dan, try signing out and in again.", thread_ts=str(card["ts"]))
    await desk.settle()
    said = [str(f.get("markdown")) for f in socket.frames if f.get("type") == "message"]
    assert any("try signing out and in again" in s for s in said)
    # and back: the visitor's answer appears in the card's thread
    await desk.core.manager.handle(visitor("that fixed it, thanks", 2))
    await desk.settle()
    thread = desk.fake.messages_in(TRIAGE, thread_ts=str(card["ts"]))
    assert any("that fixed it" in blocks_text(m) for m in thread if m.get("bot_id"))
