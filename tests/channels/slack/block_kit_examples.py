"""Render the Block Kit examples shown in docs/slack.md from the real converters.

Run ``.venv/bin/python tests/channels/slack/block_kit_examples.py`` from the repository
root and paste the output into docs/slack.md; ``test_slack_docs_examples`` fails when the
two drift apart.
"""

from __future__ import annotations

import json
from typing import Any

from bot.types import Button, Outbound
from channels.slack.convert import (
    HomeTicket,
    app_home_view,
    escalation_card,
    outbound_to_post_kwargs,
    report_issue_modal,
)


def examples() -> list[tuple[str, dict[str, Any]]]:
    """(title, JSON) pairs, in the order the docs show them."""
    kb_answer = Outbound(
        channel="slack",
        address={"channel": "D0ALICE01"},
        markdown=(
            "## Reconnect the VPN\n"
            "1. Quit the **VPN client**.\n"
            "2. Start it again and sign in.\n\n"
            "- Still failing? See [the VPN guide](https://kb.example.com/vpn)."
        ),
        buttons=(
            Button("Yes, that fixed it", "kb_helped:yes", "primary"),
            Button("No", "kb_helped:no"),
        ),
        outbox_id=1042,
    )
    relayed = Outbound(
        channel="slack",
        address={"channel": "C0TRIAGE1", "thread_ts": "1700000005.000100"},
        markdown="Alice wrote: <!channel> see <https://evil.example|my bank> & help",
        author="person",
        outbox_id=1043,
    )
    card = {
        "conversation_id": 42,
        "ticket_number": "INC-000123",
        "requester_name": "Alice Example",
        "requester_email": "alice@example.com",
        "requester_channel": "web chat",
        "priority": "P2",
        "priority_reason": "impact medium (my team) × urgency high (cannot work)",
        "summary": "VPN drops every five minutes since this morning",
        "bot_tried": (
            "KB article 'Reconnect the VPN' (did not help)",
            "asked who is affected and how urgent it is",
        ),
    }
    return [
        (
            "A knowledge-base answer with buttons (chat.postMessage)",
            outbound_to_post_kwargs(kb_answer),
        ),
        (
            "A requester's message relayed into the triage thread (R15)",
            outbound_to_post_kwargs(relayed),
        ),
        ("The escalation card, open", escalation_card(**card)),
        ("The escalation card, claimed", escalation_card(**card, claimed_by="U0AGENT01")),
        (
            "The App Home tab (views.publish)",
            app_home_view(
                tickets=[HomeTicket("INC-000123", "VPN drops", "in progress", "P2", "14:00")]
            ),
        ),
        (
            "The report-an-issue modal (views.open)",
            report_issue_modal(
                services=[("vpn", "VPN"), ("email", "Email and calendar")],
                origin_channel="D0ALICE01",
            ),
        ),
    ]


def render() -> str:
    parts = []
    for title, payload in examples():
        body = json.dumps(payload, indent=2, ensure_ascii=False)
        parts.append(f"### {title}\n\n```json\n{body}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
