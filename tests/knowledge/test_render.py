from __future__ import annotations

import pytest

from knowledge import render

BODY = """# Reset it

Go to **the portal** and follow [the guide](https://example.com/guide).

- step _one_
- step two <b>now</b>

<script>alert(1)</script> and [click](javascript:alert(1))
"""


def test_html_escapes_raw_html_and_drops_javascript_links() -> None:
    html = render(BODY, "html")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>" not in html
    assert 'href="javascript' not in html
    assert '<a href="https://example.com/guide">the guide</a>' in html
    assert "<strong>the portal</strong>" in html


def test_slack_mrkdwn() -> None:
    text = render(BODY, "slack")
    assert text.startswith("*Reset it*")
    assert "*the portal*" in text
    assert "<https://example.com/guide|the guide>" in text
    assert "• step _one_" in text
    assert "&lt;b&gt;now&lt;/b&gt;" in text  # Slack control characters escaped
    assert "<javascript" not in text


def test_plain_text() -> None:
    text = render(BODY, "plain")
    assert "**" not in text and "#" not in text
    assert "the guide (https://example.com/guide)" in text
    assert "• step one\n• step two <b>now</b>" in text
    assert "(https://example.com/guide).\n\n• step one" in text  # blank line before a list


def test_unknown_format() -> None:
    with pytest.raises(ValueError):
        render("x", "pdf")  # type: ignore[arg-type]
