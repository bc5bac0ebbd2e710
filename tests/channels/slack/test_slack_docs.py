"""The shipped manifest and docs/slack.md agree with what the code handles."""

from __future__ import annotations

from pathlib import Path

import yaml

import channels.slack

MANIFEST = Path(channels.slack.__file__).with_name("manifest.yaml")
DOCS = Path(channels.slack.__file__).resolve().parents[2] / "docs" / "slack.md"


def test_the_manifest_asks_for_what_the_channel_uses() -> None:
    manifest = yaml.safe_load(MANIFEST.read_text())

    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {
        "chat:write",
        "im:history",
        "im:read",
        "im:write",
        "app_mentions:read",
        "channels:history",
        "groups:history",
        "users:read",
        "users:read.email",
        "commands",
        "usergroups:read",
    } <= scopes
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert {"message.im", "app_mention", "message.channels", "message.groups"} <= events
    assert "app_home_opened" in events
    assert [c["command"] for c in manifest["features"]["slash_commands"]] == ["/desk"]
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True


def test_the_docs_show_the_block_kit_the_converters_produce_today(
    block_kit_examples_markdown: str,
) -> None:
    docs = DOCS.read_text()

    assert block_kit_examples_markdown.strip() in docs, (
        "docs/slack.md is out of date: run tests/channels/slack/block_kit_examples.py"
    )
    for setting in (
        "DESKBOT_SLACK_BOT_TOKEN",
        "DESKBOT_SLACK_APP_TOKEN",
        "DESKBOT_SLACK_SIGNING_SECRET",
        "DESKBOT_SLACK_API_URL",
        "DESKBOT_SLACK_TRIAGE_CHANNEL",
        "DESKBOT_SLACK_AGENT_USERGROUP",
        "DESKBOT_SLACK_AGENT_USERS",
        "https://YOUR-HOST/slack/events",
    ):
        assert setting in docs
