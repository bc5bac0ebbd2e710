"""The Slack test peers, proven against the real libraries.

The fake Web API is driven through slack_sdk's ``AsyncWebClient``; the request signer
through bolt's ``SignatureVerifier`` and an ``AsyncApp``'s own dispatch; the Socket Mode
fake through slack_sdk's aiohttp ``SocketModeClient``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from channels.slack.convert import find_outbox_message, outbox_metadata

# --------------------------------------------------------------------------------------
# the fake Web API


async def test_auth_test_answers_for_the_bot_token(fake_slack, slack_client) -> None:
    response = await slack_client.auth_test()

    assert response["user_id"] == fake_slack.bot_user_id
    assert response["bot_id"] == fake_slack.bot_id
    [call] = fake_slack.calls_to("auth.test")
    assert call.headers["Authorization"] == f"Bearer {fake_slack.bot_token}"


async def test_a_wrong_bot_token_is_invalid_auth(fake_slack) -> None:
    client = AsyncWebClient(token="xoxb-wrong", base_url=fake_slack.api_url, retry_handlers=[])

    with pytest.raises(SlackApiError) as raised:
        await client.chat_postMessage(channel="D0ALICE01", text="hi")

    assert raised.value.response["error"] == "invalid_auth"
    assert fake_slack.all_messages("D0ALICE01") == []


async def test_post_message_stores_it_and_history_returns_it_with_metadata(
    fake_slack, slack_client
) -> None:
    first = await slack_client.chat_postMessage(channel="C0TRIAGE1", text="first")
    second = await slack_client.chat_postMessage(
        channel="C0TRIAGE1",
        text="second",
        blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "*second*"}}],
        metadata=outbox_metadata(42),
    )

    assert float(second["ts"]) > float(first["ts"])
    [_, call] = fake_slack.calls_to("chat.postMessage")
    assert call.content_type == "application/json"
    assert call.args["metadata"] == outbox_metadata(42)

    history = await slack_client.conversations_history(channel="C0TRIAGE1")
    assert [m["text"] for m in history["messages"]] == ["second", "first"]  # newest first
    found = find_outbox_message(history["messages"], 42)
    assert found is not None and found["ts"] == second["ts"]
    assert found["bot_id"] == fake_slack.bot_id

    newer = await slack_client.conversations_history(channel="C0TRIAGE1", oldest=first["ts"])
    assert [m["ts"] for m in newer["messages"]] == [second["ts"]]
    limited = await slack_client.conversations_history(channel="C0TRIAGE1", limit=1)
    assert limited["has_more"] is True and len(limited["messages"]) == 1


async def test_thread_replies_stay_out_of_history_and_show_in_replies(
    fake_slack, slack_client
) -> None:
    root = await slack_client.chat_postMessage(channel="C0TRIAGE1", text="card")
    reply = await slack_client.chat_postMessage(
        channel="C0TRIAGE1", text="in thread", thread_ts=root["ts"], metadata=outbox_metadata(7)
    )

    history = await slack_client.conversations_history(channel="C0TRIAGE1")
    assert [m["ts"] for m in history["messages"]] == [root["ts"]]
    replies = await slack_client.conversations_replies(channel="C0TRIAGE1", ts=root["ts"])
    assert [m["ts"] for m in replies["messages"]] == [root["ts"], reply["ts"]]
    assert find_outbox_message(replies["messages"], 7) is not None


async def test_form_encoded_calls_are_parsed_too(fake_slack, slack_client) -> None:
    await slack_client.api_call(
        "chat.postMessage",
        data={"channel": "D0ALICE01", "text": "hello", "metadata": json.dumps(outbox_metadata(3))},
    )

    [message] = fake_slack.messages_in("D0ALICE01")
    assert message["text"] == "hello"
    assert message["metadata"] == outbox_metadata(3)


async def test_429_raises_slack_api_error_with_status_and_retry_after(
    fake_slack, slack_client
) -> None:
    fake_slack.fail_next("chat.postMessage", status=429, retry_after=7)

    with pytest.raises(SlackApiError) as raised:
        await slack_client.chat_postMessage(channel="D0ALICE01", text="hi")

    assert raised.value.response.status_code == 429
    assert raised.value.response.headers["Retry-After"] == "7"
    assert raised.value.response["error"] == "ratelimited"
    assert fake_slack.all_messages("D0ALICE01") == []
    await slack_client.chat_postMessage(channel="D0ALICE01", text="hi")  # next one passes
    assert len(fake_slack.messages_in("D0ALICE01")) == 1


async def test_500_raises_slack_api_error(fake_slack, slack_client) -> None:
    fake_slack.fail_next("chat.postMessage", status=500, times=2)

    for _ in range(2):
        with pytest.raises(SlackApiError) as raised:
            await slack_client.chat_postMessage(channel="D0ALICE01", text="hi")
        assert raised.value.response.status_code == 500
    assert fake_slack.all_messages("D0ALICE01") == []


async def test_an_error_answer_is_http_200_with_ok_false(fake_slack, slack_client) -> None:
    fake_slack.error_next("chat.postMessage", "channel_not_found")

    with pytest.raises(SlackApiError) as raised:
        await slack_client.chat_postMessage(channel="C0GONE001", text="hi")

    assert raised.value.response.status_code == 200
    assert raised.value.response["error"] == "channel_not_found"


async def test_reset_after_accept_stores_the_post_but_the_client_never_hears(
    fake_slack, slack_client
) -> None:
    fake_slack.reset_after_accept("chat.postMessage")

    with pytest.raises(aiohttp.ClientConnectionError):
        await slack_client.chat_postMessage(
            channel="D0ALICE01", text="answer", metadata=outbox_metadata(11)
        )

    # R12: the post landed; reconciliation finds it by the outbox id it carries.
    history = await slack_client.conversations_history(channel="D0ALICE01")
    assert find_outbox_message(history["messages"], 11) is not None
    assert len(fake_slack.messages_in("D0ALICE01")) == 1


async def test_the_sdk_default_retry_turns_a_reset_post_into_a_duplicate(fake_slack) -> None:
    # Why the adapter must not let slack_sdk retry chat.postMessage on connection errors.
    client = AsyncWebClient(token=fake_slack.bot_token, base_url=fake_slack.api_url)
    fake_slack.reset_after_accept("chat.postMessage")

    await client.chat_postMessage(channel="D0ALICE01", text="answer")

    assert len(fake_slack.messages_in("D0ALICE01")) == 2


async def test_a_held_answer_arrives_only_when_released(fake_slack, slack_client) -> None:
    gate = fake_slack.hold_next("chat.postMessage")
    post = asyncio.ensure_future(slack_client.chat_postMessage(channel="D0ALICE01", text="x"))

    await fake_slack.wait_for_calls("chat.postMessage")
    assert not post.done()
    assert len(fake_slack.messages_in("D0ALICE01")) == 1  # the effect is already there
    gate.set()
    response = await asyncio.wait_for(post, 5)
    assert response["ok"] is True


async def test_a_slow_answer_times_the_client_out_after_the_post_landed(fake_slack) -> None:
    client = AsyncWebClient(
        token=fake_slack.bot_token, base_url=fake_slack.api_url, timeout=1, retry_handlers=[]
    )
    fake_slack.answer_slowly("chat.postMessage", 30)

    with pytest.raises(asyncio.TimeoutError):
        await client.chat_postMessage(channel="D0ALICE01", text="slow")

    assert len(fake_slack.messages_in("D0ALICE01")) == 1


async def test_update_ephemeral_users_groups_and_im(fake_slack, slack_client) -> None:
    posted = await slack_client.chat_postMessage(channel="C0TRIAGE1", text="card v1")
    await slack_client.chat_update(channel="C0TRIAGE1", ts=posted["ts"], text="card v2")
    assert fake_slack.messages_in("C0TRIAGE1")[0]["text"] == "card v2"
    with pytest.raises(SlackApiError) as raised:
        await slack_client.chat_update(channel="C0TRIAGE1", ts="1.000001", text="nope")
    assert raised.value.response["error"] == "message_not_found"

    ephemeral = await slack_client.chat_postEphemeral(
        channel="C0TRIAGE1", user="U0ALICE01", text="only agents can claim"
    )
    assert ephemeral["message_ts"]
    assert fake_slack.ephemeral[0]["user"] == "U0ALICE01"
    assert len(fake_slack.messages_in("C0TRIAGE1")) == 1  # ephemeral is not in history

    user = await slack_client.users_info(user="U0ALICE01")
    assert user["user"]["profile"]["email"] == "alice@example.com"
    with pytest.raises(SlackApiError):
        await slack_client.users_info(user="U0NOBODY1")

    group = await slack_client.usergroups_users_list(usergroup="S0AGENTS1")
    assert group["users"] == ["U0AGENT01"]

    im = await slack_client.conversations_open(users="U0ALICE01")
    assert im["channel"]["id"].startswith("D")


async def test_views_open_and_publish(fake_slack, slack_client) -> None:
    modal = {"type": "modal", "title": {"type": "plain_text", "text": "Report"}, "blocks": []}
    opened = await slack_client.views_open(trigger_id="1.2.abc", view=modal)
    home = {"type": "home", "blocks": []}
    await slack_client.views_publish(user_id="U0ALICE01", view=home)

    assert opened["view"]["id"].startswith("V")
    assert fake_slack.views_opened[0]["view"]["title"]["text"] == "Report"
    assert fake_slack.views_published["U0ALICE01"]["type"] == "home"


async def test_apps_connections_open_needs_the_app_token(
    fake_slack, fake_socket_mode, slack_client, slack_app_token
) -> None:
    response = await slack_client.apps_connections_open(app_token=slack_app_token)
    assert response["url"].startswith(fake_socket_mode.url)

    with pytest.raises(SlackApiError) as raised:
        await slack_client.apps_connections_open(app_token=fake_slack.bot_token)
    assert raised.value.response["error"] == "not_allowed_token_type"


# --------------------------------------------------------------------------------------
# signing, checked by bolt


def test_signed_requests_pass_bolts_verifier(slack_signer, slack_signing_secret) -> None:
    verifier = SignatureVerifier(slack_signing_secret)
    event = {"type": "message", "channel": "D0ALICE01", "user": "U0ALICE01", "text": "hi"}
    requests = [
        slack_signer.event(event, event_id="Ev1"),
        slack_signer.interaction({"type": "block_actions", "actions": []}),
        slack_signer.slash_command({"command": "/desk", "text": "help"}),
    ]
    for request in requests:
        assert verifier.is_valid_request(request.body, dict(request.headers))

    tampered = requests[0].tampered(requests[0].body.replace(b"hi", b"ho"))
    assert not verifier.is_valid_request(tampered.body, dict(tampered.headers))


def test_the_timestamp_window_is_bolts(slack_signer, slack_signing_secret) -> None:
    verifier = SignatureVerifier(slack_signing_secret)
    event = {"type": "message", "channel": "D0ALICE01", "user": "U0ALICE01", "text": "hi"}
    now = int(time.time())

    stale = slack_signer.event(event, timestamp=now - 400)
    fresh = slack_signer.event(event, timestamp=now - 200)

    assert not verifier.is_valid_request(stale.body, dict(stale.headers))
    assert verifier.is_valid_request(fresh.body, dict(fresh.headers))


async def test_bolt_dispatch_accepts_signed_and_refuses_tampered(
    fake_slack, slack_signer, slack_signing_secret
) -> None:
    client = AsyncWebClient(token=fake_slack.bot_token, base_url=fake_slack.api_url)
    app = AsyncApp(client=client, signing_secret=slack_signing_secret)
    seen: list[dict[str, Any]] = []

    @app.event("message")
    async def on_message(event: dict[str, Any]) -> None:
        seen.append(event)

    @app.command("/desk")
    async def on_desk(ack: Any) -> None:
        await ack()

    event = {
        "type": "message",
        "channel": "D0ALICE01",
        "channel_type": "im",
        "user": "U0ALICE01",
        "text": "vpn down",
        "ts": "1700000000.000100",
    }
    good = slack_signer.event(event, event_id="Ev2")
    response = await app.async_dispatch(AsyncBoltRequest(body=good.text, headers=good.headers))
    assert response.status == 200

    tampered = good.tampered(good.body.replace(b"vpn down", b"<!channel>"))
    response = await app.async_dispatch(
        AsyncBoltRequest(body=tampered.text, headers=tampered.headers)
    )
    assert response.status == 401

    command = slack_signer.slash_command({"command": "/desk", "text": "help", "user_id": "U1"})
    response = await app.async_dispatch(
        AsyncBoltRequest(body=command.text, headers=command.headers)
    )
    assert response.status == 200

    unsigned = command.without_header("X-Slack-Signature")
    response = await app.async_dispatch(
        AsyncBoltRequest(body=unsigned.text, headers=unsigned.headers)
    )
    assert response.status == 401


# --------------------------------------------------------------------------------------
# Socket Mode


class _Acker:
    """A Socket Mode listener that acks every request and remembers it."""

    def __init__(self) -> None:
        self.requests: list[SocketModeRequest] = []

    async def __call__(self, client: SocketModeClient, request: SocketModeRequest) -> None:
        self.requests.append(request)
        await client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))


def _socket_client(fake_slack, app_token: str, listener: _Acker) -> SocketModeClient:
    web = AsyncWebClient(token=fake_slack.bot_token, base_url=fake_slack.api_url)
    client = SocketModeClient(app_token=app_token, web_client=web)
    client.socket_mode_request_listeners.append(listener)
    return client


def _im_event(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "channel": "D0ALICE01",
        "channel_type": "im",
        "user": "U0ALICE01",
        "text": text,
        "ts": "1700000000.000200",
    }


async def test_socket_mode_client_connects_acks_and_reconnects_on_refresh(
    fake_slack, fake_socket_mode, slack_app_token
) -> None:
    listener = _Acker()
    client = _socket_client(fake_slack, slack_app_token, listener)
    try:
        await client.connect()
        await fake_socket_mode.wait_for_connections(1)
        [first] = fake_socket_mode.open_connections

        envelope = await fake_socket_mode.push_event(_im_event("hello"), event_id="EvA")
        ack = await fake_socket_mode.wait_for_ack(envelope.envelope_id)
        assert ack.connection_id == first.id
        assert listener.requests[0].type == "events_api"
        assert listener.requests[0].payload["event_id"] == "EvA"

        await fake_socket_mode.send_disconnect("refresh_requested")
        await asyncio.wait_for(first.closed.wait(), 5)
        await fake_socket_mode.wait_for_connections(1)
        [second] = fake_socket_mode.open_connections
        assert second.id != first.id
        assert len(fake_slack.calls_to("apps.connections.open")) == 2

        envelope = await fake_socket_mode.push_slash_command(
            {"command": "/desk", "text": "help", "user_id": "U0ALICE01"}
        )
        ack = await fake_socket_mode.wait_for_ack(envelope.envelope_id)
        assert ack.connection_id == second.id
        assert listener.requests[-1].type == "slash_commands"
        assert fake_socket_mode.duplicate_acks == []
    finally:
        await client.close()


async def test_too_many_websockets_refuses_and_the_client_tries_again(
    fake_slack, fake_socket_mode, slack_app_token
) -> None:
    fake_socket_mode.refuse_next(1)
    listener = _Acker()
    client = _socket_client(fake_slack, slack_app_token, listener)
    try:
        await client.connect()
        await fake_socket_mode.wait_for_connections(1, timeout=10)

        assert fake_socket_mode.refused == 1
        assert fake_socket_mode.connection_attempts >= 2
        envelope = await fake_socket_mode.push_interactive(
            {"type": "block_actions", "user": {"id": "U0ALICE01"}, "actions": []}
        )
        await fake_socket_mode.wait_for_ack(envelope.envelope_id)
    finally:
        await client.close()


async def test_events_are_spread_over_several_connections(
    fake_slack, fake_socket_mode, slack_app_token
) -> None:
    listeners = [_Acker(), _Acker()]
    clients = [_socket_client(fake_slack, slack_app_token, listener) for listener in listeners]
    try:
        for client in clients:
            await client.connect()
        await fake_socket_mode.wait_for_connections(2)

        envelopes = [
            await fake_socket_mode.push_event(_im_event(f"m{i}"), event_id=f"Ev{i}")
            for i in range(20)
        ]
        await fake_socket_mode.wait_for_acks(20)

        assert {e.connection_id for e in envelopes} == {
            c.id for c in fake_socket_mode.open_connections
        }
        assert sum(len(listener.requests) for listener in listeners) == 20
        assert all(listener.requests for listener in listeners)
    finally:
        for client in clients:
            await client.close()
