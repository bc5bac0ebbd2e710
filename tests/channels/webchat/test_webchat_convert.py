"""Pure parts of the web chat: tokens, identity hashes, frames, the rate limiter."""

from __future__ import annotations

from channels.base import Button, Outbound
from channels.webchat.convert import (
    VisitorSession,
    VisitorTokens,
    identity_hash,
    inbound_from_frame,
    new_visitor_key,
    outbound_frame,
    verify_identity,
)
from channels.webchat.guards import RateLimiter


def test_token_names_exactly_one_visitor_and_needs_the_key() -> None:
    tokens = VisitorTokens("secret-one")
    visitor = new_visitor_key()
    token = tokens.issue(VisitorSession(visitor=visitor))
    assert tokens.check(token, visitor) == VisitorSession(visitor=visitor)
    assert tokens.check(token, new_visitor_key()) is None
    assert VisitorTokens("secret-two").check(token, visitor) is None
    assert tokens.check(token + "x", visitor) is None
    assert tokens.check(token, "../../etc") is None


def test_identity_hash_is_case_insensitive_and_needs_the_secret() -> None:
    good = identity_hash("s3cret", "alice@example.com")
    assert verify_identity("s3cret", " Alice@Example.COM ", good) == "alice@example.com"
    assert verify_identity("other", "alice@example.com", good) is None
    assert verify_identity("s3cret", "bob@example.com", good) is None
    assert verify_identity(None, "alice@example.com", good) is None
    assert verify_identity("s3cret", "alice@example.com", None) is None


def test_frame_to_inbound_keeps_the_email_only_when_verified() -> None:
    frame = {"type": "message", "client_id": "c-1", "text": "", "button": "kb:no:vpn"}
    anonymous = inbound_from_frame(frame, VisitorSession(visitor="V" * 32))
    assert anonymous.external_id == f"{'V' * 32}:c-1"
    assert anonymous.thread_key == f"visitor:{'V' * 32}"
    assert anonymous.button == "kb:no:vpn" and anonymous.text == "kb:no:vpn"
    assert anonymous.sender.email is None and not anonymous.sender.email_verified
    verified = inbound_from_frame(frame, VisitorSession(visitor="V" * 32, email="a@example.com"))
    assert verified.sender.email == "a@example.com" and verified.sender.email_verified


def test_outbound_frame_carries_safe_html_and_choices() -> None:
    outbound = Outbound(
        channel="webchat",
        address={"visitor": "V" * 32},
        markdown="**Hi** <script>alert(1)</script>",
        buttons=(Button("No", "kb:no:x"),),
        quick_replies=("my tickets",),
        outbox_id=7,
        meta={"message_id": 3},
    )
    frame = outbound_frame(outbound)
    assert frame["id"] == 7 and frame["message_id"] == 3
    assert "<strong>Hi</strong>" in frame["html"] and "<script>" not in frame["html"]
    assert frame["buttons"] == [{"label": "No", "value": "kb:no:x"}]
    assert frame["quick_replies"] == ["my tickets"]


def test_rate_limiter_refills_over_time_per_key() -> None:
    now = [0.0]
    limiter = RateLimiter(60, burst=2, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    assert limiter.allow("b")
    now[0] += 1.0  # one token per second at 60/min
    assert limiter.allow("a") and not limiter.allow("a")
