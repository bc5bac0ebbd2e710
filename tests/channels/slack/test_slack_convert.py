"""The pure Slack converters: payloads ↔ Inbound/Outbound, Block Kit, escaping (R13, R15)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.types import Button, Outbound
from channels.slack.convert import (
    CLAIM_ACTION,
    HAND_BACK_ACTION,
    REPORT_ISSUE_ACTION,
    RESOLVE_ACTION,
    SECTION_TEXT_LIMIT,
    HomeTicket,
    app_home_view,
    escalation_card,
    escape_mrkdwn,
    find_outbox_message,
    inbound_from_block_action,
    inbound_from_event,
    inbound_from_slash_command,
    inbound_from_view_submission,
    is_from_bot,
    markdown_to_mrkdwn,
    outbound_to_ephemeral_kwargs,
    outbound_to_post_kwargs,
    outbox_id_of,
    report_issue_modal,
    slack_to_plain,
    slash_command_opens_report,
    split_mrkdwn,
)

BOT = "U0DESKBOT"


def callback(event: dict[str, Any], event_id: str = "Ev0001") -> dict[str, Any]:
    return {"type": "event_callback", "team_id": "T0DESK001", "event_id": event_id, "event": event}


def im(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "message",
        "channel": "D0ALICE01",
        "channel_type": "im",
        "user": "U0ALICE01",
        "text": text,
        "ts": "1700000000.000100",
        **extra,
    }


# --------------------------------------------------------------------------------------
# Slack markup → plain text


@pytest.mark.parametrize(
    ("slack", "plain"),
    [
        ("hi <@U0BOB0001> and <@U0CARL001|carl>", "hi @bob and @carl"),
        ("see <#C0GENERAL|general> or <#C0OTHER01>", "see #general or #C0OTHER01"),
        ("<!here> <!channel> <!subteam^S0AGENTS1|@agents>", "@here @channel @agents"),
        ("<https://vpn.example.com|the VPN page>", "the VPN page (https://vpn.example.com)"),
        ("<https://example.com|example.com> <https://x.io>", "example.com https://x.io"),
        ("<mailto:it@example.com|it@example.com>", "it@example.com"),
        ("a &amp; b &lt;tag&gt; &amp;lt;", "a & b <tag> &lt;"),
        ("<https://x.io/?a=1&amp;b=2|q&amp;a>", "q&a (https://x.io/?a=1&b=2)"),
    ],
)
def test_slack_markup_reads_as_plain_text(slack: str, plain: str) -> None:
    assert slack_to_plain(slack, user_names={"U0BOB0001": "bob"}) == plain


# --------------------------------------------------------------------------------------
# events → Inbound


def test_a_direct_message_becomes_an_inbound() -> None:
    body = callback(im("my <https://vpn.example.com|VPN> is down &amp; slow"), "Ev42")

    inbound = inbound_from_event(body, bot_user_id=BOT)

    assert inbound is not None
    assert inbound.channel == "slack"
    assert inbound.external_id == "Ev42"
    assert inbound.thread_key == "dm:D0ALICE01"
    assert inbound.reply_to == {"channel": "D0ALICE01"}
    assert inbound.sender.external_id == "U0ALICE01"
    assert inbound.sender.email is None  # filled later from users.info
    assert inbound.text == "my VPN (https://vpn.example.com) is down & slow"
    assert inbound.received_at is not None and inbound.received_at.year == 2023
    assert inbound.alt_ids == ("ts:D0ALICE01:1700000000.000100",)


def test_a_mention_is_answered_in_its_thread_without_the_mention() -> None:
    event = {
        "type": "app_mention",
        "channel": "C0GENERAL",
        "user": "U0ALICE01",
        "text": f"<@{BOT}> printer on floor 3 is jammed",
        "ts": "1700000001.000200",
    }

    inbound = inbound_from_event(callback(event, "Ev43"), bot_user_id=BOT)

    assert inbound is not None
    assert inbound.text == "printer on floor 3 is jammed"
    assert inbound.thread_key == "thread:C0GENERAL:1700000001.000200"
    assert inbound.reply_to == {"channel": "C0GENERAL", "thread_ts": "1700000001.000200"}


def test_a_mention_inside_a_thread_keys_on_the_thread_root() -> None:
    event = {
        "type": "app_mention",
        "channel": "C0GENERAL",
        "user": "U0ALICE01",
        "text": f"<@{BOT}> still broken",
        "ts": "1700000009.000100",
        "thread_ts": "1700000001.000200",
    }

    inbound = inbound_from_event(callback(event), bot_user_id=BOT)

    assert inbound is not None
    assert inbound.thread_key == "thread:C0GENERAL:1700000001.000200"
    assert inbound.reply_to["thread_ts"] == "1700000001.000200"


def test_a_thread_reply_in_a_channel_becomes_an_inbound() -> None:
    event = {
        "type": "message",
        "channel": "C0TRIAGE1",
        "channel_type": "channel",
        "user": "U0AGENT01",
        "text": "note: checked the logs",
        "ts": "1700000010.000100",
        "thread_ts": "1700000005.000100",
    }

    inbound = inbound_from_event(callback(event), bot_user_id=BOT)

    assert inbound is not None
    assert inbound.thread_key == "thread:C0TRIAGE1:1700000005.000100"
    assert inbound.text == "note: checked the logs"


def test_top_level_channel_chatter_and_mention_twins_are_ignored() -> None:
    chatter = {
        "type": "message",
        "channel": "C0GENERAL",
        "channel_type": "channel",
        "user": "U0ALICE01",
        "text": "lunch?",
        "ts": "1700000010.000100",
    }
    twin = {
        **chatter,
        "text": f"<@{BOT}> help",
        "thread_ts": "1700000001.000100",
    }

    assert inbound_from_event(callback(chatter), bot_user_id=BOT) is None
    # the app_mention event for the same message carries it
    assert inbound_from_event(callback(twin), bot_user_id=BOT) is None


def test_a_message_and_its_mention_twin_share_an_alt_id() -> None:
    message = im("hi")
    mention = {**message, "type": "app_mention", "text": f"<@{BOT}> hi"}

    first = inbound_from_event(callback(message, "Ev1"), bot_user_id=BOT)
    second = inbound_from_event(callback(mention, "Ev2"), bot_user_id=BOT)

    assert first is not None and second is not None
    assert first.external_id != second.external_id
    assert first.alt_ids == second.alt_ids


def test_a_retried_event_keeps_its_external_id() -> None:
    body = callback(im("hello"), "Ev77")

    first = inbound_from_event(body, bot_user_id=BOT)
    again = inbound_from_event(json.loads(json.dumps(body)), bot_user_id=BOT)

    assert first is not None and again is not None
    assert first.external_id == again.external_id == "Ev77"


@pytest.mark.parametrize(
    "event",
    [
        im("from another bot", bot_id="B0OTHER01"),
        im("legacy bot", subtype="bot_message", user=None),
        im("our own echo", user=BOT),
        im("workflow", bot_profile={"id": "B0WF00001"}),
    ],
)
def test_own_and_other_bots_messages_are_ignored(event: dict[str, Any]) -> None:
    assert is_from_bot(event, bot_user_id=BOT)
    assert inbound_from_event(callback(event), bot_user_id=BOT) is None


def test_a_person_is_not_a_bot() -> None:
    assert not is_from_bot(im("hi"), bot_user_id=BOT)
    assert not is_from_bot(im("hi"), bot_user_id=None)


@pytest.mark.parametrize("subtype", ["message_changed", "message_deleted", "channel_join"])
def test_edits_deletions_and_joins_are_ignored(subtype: str) -> None:
    assert inbound_from_event(callback(im("x", subtype=subtype)), bot_user_id=BOT) is None


def test_a_file_share_is_a_message() -> None:
    event = im("screenshot", subtype="file_share", files=[{"name": "error.png"}])

    inbound = inbound_from_event(callback(event), bot_user_id=BOT)

    assert inbound is not None
    assert inbound.meta["files"] == ("error.png",)


# --------------------------------------------------------------------------------------
# interactions → Inbound


def block_action(action: dict[str, Any], **container: Any) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {"id": "U0AGENT01", "username": "bob", "name": "bob"},
        "team": {"id": "T0DESK001"},
        "trigger_id": "123.456.abc",
        "container": {"type": "message", **container},
        "actions": [action],
    }


def test_a_button_click_becomes_an_inbound_with_its_value() -> None:
    payload = block_action(
        {
            "type": "button",
            "action_id": CLAIM_ACTION,
            "block_id": "deskbot_card",
            "value": "claim:INC-000123",
            "text": {"type": "plain_text", "text": "Claim"},
            "action_ts": "1700000020.123456",
        },
        channel_id="C0TRIAGE1",
        message_ts="1700000005.000100",
    )

    inbound = inbound_from_block_action(payload)

    assert inbound is not None
    assert inbound.button == "claim:INC-000123"
    assert inbound.text == "Claim"
    assert inbound.external_id == "action:U0AGENT01:1700000020.123456"
    assert inbound.thread_key == "thread:C0TRIAGE1:1700000005.000100"
    assert inbound.reply_to == {"channel": "C0TRIAGE1", "thread_ts": "1700000005.000100"}
    assert inbound.meta["action_id"] == CLAIM_ACTION


def test_two_clicks_are_two_external_ids() -> None:
    action = {"type": "button", "action_id": "a", "value": "v", "action_ts": "1.000001"}
    first = inbound_from_block_action(
        block_action(action, channel_id="D0ALICE01", message_ts="1.0")
    )
    second = inbound_from_block_action(
        block_action({**action, "action_ts": "1.050001"}, channel_id="D0ALICE01", message_ts="1.0")
    )

    assert first is not None and second is not None
    assert first.external_id != second.external_id
    assert first.thread_key == second.thread_key == "dm:D0ALICE01"


def test_a_quick_reply_reads_as_typed_text() -> None:
    payload = block_action(
        {
            "type": "button",
            "action_id": "deskbot_reply_0",
            "value": "yes, that helped",
            "text": {"type": "plain_text", "text": "yes, that helped"},
            "action_ts": "1.000002",
        },
        channel_id="D0ALICE01",
        message_ts="1.0",
    )

    inbound = inbound_from_block_action(payload)

    assert inbound is not None
    assert inbound.text == "yes, that helped"
    assert inbound.button is None


def test_an_app_home_button_answers_in_the_dm() -> None:
    payload = block_action(
        {
            "type": "button",
            "action_id": REPORT_ISSUE_ACTION,
            "value": "report_issue",
            "action_ts": "1.000003",
        },
    )
    payload["container"] = {"type": "view", "view_id": "V0HOME001"}

    inbound = inbound_from_block_action(payload)

    assert inbound is not None
    assert inbound.thread_key == "home:U0AGENT01"
    assert inbound.reply_to == {"user": "U0AGENT01"}


def submitted(view: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "view_submission",
        "user": {"id": "U0ALICE01", "name": "alice"},
        "team": {"id": "T0DESK001"},
        "view": {**view, "id": "V0MODAL01", "state": {"values": values}},
    }


def test_the_report_modal_round_trips_into_an_inbound() -> None:
    modal = report_issue_modal(
        services=[("vpn", "VPN"), ("email", "Email")], origin_channel="D0ALICE01"
    )
    payload = submitted(
        modal,
        {
            "service": {"service": {"type": "static_select", "selected_option": {"value": "vpn"}}},
            "description": {"description": {"type": "plain_text_input", "value": " VPN drops "}},
            "impact": {"impact": {"type": "radio_buttons", "selected_option": {"value": "high"}}},
            "urgency": {"urgency": {"type": "radio_buttons", "selected_option": {"value": "low"}}},
        },
    )

    inbound = inbound_from_view_submission(payload)

    assert inbound is not None
    assert inbound.external_id == "view:V0MODAL01"
    assert inbound.text == "VPN drops"
    assert inbound.thread_key == "dm:D0ALICE01"
    assert inbound.reply_to == {"channel": "D0ALICE01"}
    assert inbound.meta["form"] == "report_issue"
    assert (inbound.meta["service"], inbound.meta["impact"], inbound.meta["urgency"]) == (
        "vpn",
        "high",
        "low",
    )


def test_a_modal_from_the_app_home_answers_the_person() -> None:
    payload = submitted(
        report_issue_modal(services=[]),
        {"description": {"description": {"value": "laptop will not boot"}}},
    )

    inbound = inbound_from_view_submission(payload)

    assert inbound is not None
    assert inbound.thread_key == "home:U0ALICE01"
    assert inbound.meta["service"] is None


def test_another_modal_is_not_ours() -> None:
    payload = submitted({"callback_id": "something_else"}, {})
    assert inbound_from_view_submission(payload) is None


def slash(text: str, channel: str = "D0ALICE01") -> dict[str, str]:
    return {
        "command": "/desk",
        "text": text,
        "user_id": "U0ALICE01",
        "user_name": "alice",
        "channel_id": channel,
        "trigger_id": "99.88.ff",
        "team_id": "T0DESK001",
        "response_url": "https://hooks.slack.com/commands/x",
    }


def test_desk_alone_opens_the_report_modal() -> None:
    assert slash_command_opens_report(slash(""))
    assert slash_command_opens_report(slash("  report "))
    assert inbound_from_slash_command(slash("")) is None
    assert not slash_command_opens_report(slash("tickets"))


def test_desk_status_is_an_inbound() -> None:
    inbound = inbound_from_slash_command(slash("status INC-000123"))

    assert inbound is not None
    assert inbound.text == "status INC-000123"
    assert inbound.external_id == "command:99.88.ff"
    assert inbound.thread_key == "dm:D0ALICE01"


def test_desk_in_a_channel_answers_ephemerally() -> None:
    inbound = inbound_from_slash_command(slash("help", channel="C0GENERAL"))

    assert inbound is not None
    assert inbound.reply_to == {"channel": "C0GENERAL", "user": "U0ALICE01", "ephemeral": True}


# --------------------------------------------------------------------------------------
# Markdown → mrkdwn and escaping


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("**bold** and *it* and ~~gone~~", "*bold* and _it_ and ~gone~"),
        ("__bold__", "*bold*"),
        (
            "[the VPN guide](https://kb.example.com/vpn)",
            "<https://kb.example.com/vpn|the VPN guide>",
        ),
        ("## Reset your password", "*Reset your password*"),
        ("- one\n- two\n  - nested", "• one\n• two\n  • nested"),
        ("1. first\n2. second", "1. first\n2. second"),
        ("> quoted & kept", "> quoted &amp; kept"),
        ("use `a<b` here", "use `a&lt;b` here"),
        ("```\nif a < b && c:\n    **x**\n```", "```\nif a &lt; b &amp;&amp; c:\n    **x**\n```"),
        ("a\n\n---\n\nb", "a\n\n\n\nb"),
        ("[x](javascript:alert(1))", "x (javascript:alert(1))"),
    ],
)
def test_markdown_becomes_mrkdwn(markdown: str, mrkdwn: str) -> None:
    assert markdown_to_mrkdwn(markdown) == mrkdwn


def test_user_text_with_slack_controls_is_shown_literally() -> None:
    # R15
    hostile = "<!channel> <https://evil.example|bank> & <@U0BOSS001>"

    rendered = markdown_to_mrkdwn(hostile, links=False)

    assert rendered == (
        "&lt;!channel&gt; &lt;https://evil.example|bank&gt; &amp; &lt;@U0BOSS001&gt;"
    )
    assert slack_to_plain(rendered) == hostile  # what the reader sees


def test_untrusted_authors_get_no_links() -> None:
    relayed = Outbound(
        channel="slack",
        address={"channel": "C0TRIAGE1", "thread_ts": "1.0"},
        markdown="click [here](https://evil.example) <!here>",
        author="person",
    )

    kwargs = outbound_to_post_kwargs(relayed)

    text = kwargs["blocks"][0]["text"]["text"]
    assert "<" not in text
    assert text == "click [here](https://evil.example) &lt;!here&gt;"


def test_link_addresses_cannot_break_out_of_the_link() -> None:
    rendered = markdown_to_mrkdwn("[a](https://x.example/?q=1|<!channel>&b=2)")

    assert rendered == "<https://x.example/?q=1%7C&lt;!channel%3E&amp;b=2|a>"


@given(st.text())
def test_untrusted_text_never_contains_a_control_sequence(text: str) -> None:
    rendered = markdown_to_mrkdwn(text, links=False)

    assert "<" not in rendered
    # every & starts one of the three entities
    assert re.fullmatch(r"(?:[^&]|&amp;|&lt;|&gt;)*", rendered, flags=re.DOTALL)


@given(st.text())
def test_bot_markdown_only_makes_web_links(text: str) -> None:
    rendered = markdown_to_mrkdwn(text)

    for match in re.finditer(r"<([^>]*)>", rendered):
        assert match.group(1).startswith(("http://", "https://", "mailto:"))


def test_a_long_answer_is_split_under_the_section_limit() -> None:
    paragraph = "The VPN client needs a restart after the update. " * 20
    code = "```\n" + "\n".join(f"line {i} <tag> & more" for i in range(200)) + "\n```"
    markdown = "\n\n".join([paragraph] * 6 + [code] + [paragraph] * 4)

    mrkdwn = markdown_to_mrkdwn(markdown)
    pieces = split_mrkdwn(mrkdwn)

    assert len(pieces) > 3
    assert all(len(piece) <= SECTION_TEXT_LIMIT for piece in pieces)
    assert all(piece.count("```") % 2 == 0 for piece in pieces)
    squash = re.compile(r"\s+|```")
    assert squash.sub("", "".join(pieces)) == squash.sub("", mrkdwn)


def test_one_enormous_word_is_cut_outside_entities() -> None:
    word = "a&b" * 2000

    pieces = split_mrkdwn(escape_mrkdwn(word), limit=1000)

    assert all(len(piece) <= 1000 for piece in pieces)
    assert all(not re.search(r"&(?!amp;)", piece) for piece in pieces)
    assert "".join(pieces) == escape_mrkdwn(word)


# --------------------------------------------------------------------------------------
# Outbound → chat.postMessage


def answer(**overrides: Any) -> Outbound:
    values: dict[str, Any] = {
        "channel": "slack",
        "address": {"channel": "D0ALICE01"},
        "markdown": "**Try this:** restart the [VPN client](https://kb.example.com/vpn).",
        "buttons": (Button("Yes, fixed", "kb_helped:yes", "primary"), Button("No", "kb_helped:no")),
        "quick_replies": ("talk to a human",),
        "outbox_id": 17,
    }
    values.update(overrides)
    return Outbound(**values)


def test_an_outbound_becomes_post_message_kwargs() -> None:
    kwargs = outbound_to_post_kwargs(answer())

    assert kwargs["channel"] == "D0ALICE01"
    assert "thread_ts" not in kwargs
    assert kwargs["text"] == "*Try this:* restart the <https://kb.example.com/vpn|VPN client>."
    section, actions = kwargs["blocks"]
    assert section == {"type": "section", "text": {"type": "mrkdwn", "text": kwargs["text"]}}
    assert actions["type"] == "actions"
    assert [e["value"] for e in actions["elements"]] == [
        "kb_helped:yes",
        "kb_helped:no",
        "talk to a human",
    ]
    assert actions["elements"][0]["style"] == "primary"
    action_ids = [e["action_id"] for e in actions["elements"]]
    assert len(set(action_ids)) == len(action_ids)
    assert kwargs["metadata"] == {
        "event_type": "deskbot_outbox",
        "event_payload": {"outbox_id": 17},
    }
    assert outbox_id_of({"metadata": kwargs["metadata"]}) == 17


def test_a_thread_reply_carries_thread_ts_and_no_outbox_id_means_no_metadata() -> None:
    kwargs = outbound_to_post_kwargs(
        answer(address={"channel": "C0GENERAL", "thread_ts": "1.5"}, outbox_id=None, buttons=())
    )

    assert kwargs["thread_ts"] == "1.5"
    assert "metadata" not in kwargs


def test_a_long_answer_becomes_several_sections() -> None:
    long = "\n\n".join(f"Step {i}: " + "do the thing carefully. " * 40 for i in range(12))

    kwargs = outbound_to_post_kwargs(answer(markdown=long, buttons=(), quick_replies=()))

    sections = [b for b in kwargs["blocks"] if b["type"] == "section"]
    assert len(sections) > 1
    assert all(len(s["text"]["text"]) <= SECTION_TEXT_LIMIT for s in sections)
    assert len(kwargs["text"]) <= 3000


def test_an_outbound_needs_a_channel() -> None:
    with pytest.raises(ValueError):
        outbound_to_post_kwargs(answer(address={"user": "U0ALICE01"}))


def test_ephemeral_kwargs_name_the_user_and_carry_no_metadata() -> None:
    kwargs = outbound_to_ephemeral_kwargs(
        answer(address={"channel": "C0TRIAGE1", "user": "U0ALICE01", "ephemeral": True})
    )

    assert kwargs["user"] == "U0ALICE01"
    assert "metadata" not in kwargs


def test_find_outbox_message_picks_ours_only() -> None:
    messages = [
        {"ts": "3", "metadata": {"event_type": "other_app", "event_payload": {"outbox_id": 5}}},
        {
            "ts": "2",
            "metadata": {"event_type": "deskbot_outbox", "event_payload": {"outbox_id": 5}},
        },
        {"ts": "1", "text": "no metadata"},
    ]

    found = find_outbox_message(messages, 5)

    assert found is not None and found["ts"] == "2"
    assert find_outbox_message(messages, 6) is None


# --------------------------------------------------------------------------------------
# escalation card, App Home, modal


CARD = {
    "conversation_id": 42,
    "ticket_number": "INC-000123",
    "requester_name": "Alice <!channel>",
    "requester_email": "alice@example.com",
    "requester_channel": "web chat",
    "priority": "P2",
    "priority_reason": "impact high × urgency medium",
    "summary": "VPN drops every 5 minutes <https://evil.example|bank>",
    "bot_tried": ("KB: Reset the VPN client (did not help)", "asked impact and urgency"),
}


def card_text(card: dict[str, Any]) -> str:
    return json.dumps(card["blocks"], ensure_ascii=False)


def test_an_open_card_offers_claim_and_escapes_what_the_requester_wrote() -> None:
    card = escalation_card(**CARD)

    actions = [b for b in card["blocks"] if b["type"] == "actions"]
    assert [e["action_id"] for e in actions[0]["elements"]] == [CLAIM_ACTION]
    assert actions[0]["elements"][0]["value"] == "claim:42"
    rendered = card_text(card)
    assert "Alice &lt;!channel&gt;" in rendered
    assert "&lt;https://evil.example|bank&gt;" in rendered
    assert "<!channel>" not in card["text"]
    assert "impact high × urgency medium" in rendered
    assert "Reset the VPN client" in rendered


def test_a_claimed_card_offers_hand_back_and_resolve() -> None:
    card = escalation_card(**CARD, claimed_by="U0AGENT01")

    actions = [b for b in card["blocks"] if b["type"] == "actions"]
    assert [e["action_id"] for e in actions[0]["elements"]] == [HAND_BACK_ACTION, RESOLVE_ACTION]
    assert "Claimed by <@U0AGENT01>" in card_text(card)


def test_a_resolved_card_has_no_buttons() -> None:
    card = escalation_card(**CARD, claimed_by="U0AGENT01", resolved_by="U0AGENT01")

    assert not [b for b in card["blocks"] if b["type"] == "actions"]
    assert "Resolved by <@U0AGENT01>" in card_text(card)


def test_a_forged_agent_id_is_not_a_mention() -> None:
    card = escalation_card(**CARD, claimed_by="<!channel>")

    assert "<!channel>" not in card_text(card)


def test_the_app_home_lists_open_tickets_and_offers_a_report() -> None:
    view = app_home_view(
        tickets=[
            HomeTicket("INC-000123", "VPN drops", "in progress", "P2", "14:00"),
            HomeTicket("INC-000124", "New <laptop>", "waiting for you"),
        ]
    )

    assert view["type"] == "home"
    rendered = json.dumps(view, ensure_ascii=False)
    assert REPORT_ISSUE_ACTION in rendered
    assert "*INC-000123* · VPN drops\\nin progress · priority P2 · next update by 14:00" in rendered
    assert "New &lt;laptop&gt;" in rendered


def test_an_empty_app_home_says_so_and_a_full_one_stays_under_the_limit() -> None:
    assert "You have no open tickets." in json.dumps(app_home_view(tickets=[]))

    many = [HomeTicket(f"INC-{i:06d}", "x", "new") for i in range(150)]
    view = app_home_view(tickets=many)
    assert len(view["blocks"]) <= 100
    assert "110 more" in json.dumps(view)


def test_the_report_modal_has_its_four_fields() -> None:
    modal = report_issue_modal(services=[("vpn", "VPN")], origin_channel="D0ALICE01")

    assert modal["type"] == "modal"
    assert [b["block_id"] for b in modal["blocks"]] == [
        "service",
        "description",
        "impact",
        "urgency",
    ]
    assert modal["blocks"][0]["element"]["type"] == "static_select"
    assert json.loads(modal["private_metadata"]) == {"channel": "D0ALICE01"}
    assert len(modal["title"]["text"]) <= 24


def test_a_huge_catalogue_falls_back_to_typing_the_service() -> None:
    services = [(f"s{i}", f"Service {i}") for i in range(150)]

    modal = report_issue_modal(services=services)

    assert modal["blocks"][0]["element"]["type"] == "plain_text_input"
