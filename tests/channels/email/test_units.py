"""Unit tests of the email heart: R17, R29, R30, R31, tokens, converters, limits, fuzz."""

from __future__ import annotations

import email
from email import policy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.types import Outbound
from channels.email.classify import classify
from channels.email.convert import inbound_from_mail, message_from_outbound, ticket_hint
from channels.email.htmltext import html_to_text
from channels.email.parse import ParseLimits, parse_mail, sanitise_filename
from channels.email.strip import strip_reply
from channels.email.tokens import (
    conversation_of_reference,
    mint_message_id,
    mint_reply_token,
    reply_address,
    verify_reference,
    verify_reply_token,
)

SECRET = "test-secret"
DESK = "desk@example.com"


def mail(headers: str, body: str = "Hello, my laptop is broken.\n") -> bytes:
    return (headers.strip() + "\n\n" + body).replace("\n", "\r\n").encode()


BASE = "From: Ann <ann@corp.com>\nTo: desk@example.com\nSubject: help\nMessage-ID: <a1@corp.com>"


@pytest.mark.parametrize(
    "header",
    [
        "Auto-Submitted: auto-replied",
        "Auto-Submitted: Auto-Replied",
        "Auto-Submitted: auto-generated",
        "Auto-Submitted: auto-notified; owner-email=x@y.z",
        "X-Autoreply: yes",
        "X-Autorespond: yes",
        "X-Auto-Response-Suppress: All",
        "Precedence: bulk",
        "Precedence: list",
        "Precedence: junk",
        "Precedence: auto_reply",
        "List-Id: <it.corp.com>",
        "List-Unsubscribe: <mailto:leave@corp.com>",
        "Return-Path: <>",
    ],
)
def test_r17_auto_reply_headers_open_no_ticket(header: str) -> None:
    verdict = classify(parse_mail(mail(f"{header}\n{BASE}")))
    assert verdict.kind == "auto_reply" and not verdict.creates_ticket
    assert header.split(":")[0].lower() in verdict.reason.lower()


@pytest.mark.parametrize(
    "subject",
    [
        "Out of Office: help",
        "Automatic reply: help",
        "Abwesenheitsnotiz: help",
        "Réponse automatique : help",
        "Respuesta automática: help",
        "Risposta automatica: help",
        "Automatisch antwoord: help",
    ],
)
def test_r17_vacation_subjects(subject: str) -> None:
    raw = mail(BASE.replace("Subject: help", f"Subject: {subject}"))
    assert classify(parse_mail(raw)).kind == "auto_reply"


def test_auto_submitted_no_and_forwarded_are_still_human() -> None:
    assert classify(parse_mail(mail(f"Auto-Submitted: no\n{BASE}"))).kind == "human"


def test_own_address_and_own_marker() -> None:
    own = mail(BASE.replace("ann@corp.com", "Desk+c-1-abc@Example.com"))
    assert classify(parse_mail(own), own_addresses=[DESK]).kind == "own"
    marked = mail(f"X-Deskbot-Outbox: 7\n{BASE}")
    assert classify(parse_mail(marked), own_addresses=[DESK]).kind == "own"
    assert classify(parse_mail(mail(BASE)), own_addresses=[DESK]).kind == "human"


def test_r31_display_name_that_looks_like_an_address_is_only_a_name() -> None:
    raw = mail(BASE.replace("Ann <ann@corp.com>", '"boss@corp.com" <evil@x.example>'))
    parsed = parse_mail(raw)
    assert parsed.from_address == "evil@x.example"
    inbound = inbound_from_mail(
        parsed, classify(parsed), mailbox="INBOX", uidvalidity=1, uid=2, secret=SECRET
    )
    assert inbound.sender.external_id == "evil@x.example"
    assert inbound.sender.email == "evil@x.example"
    assert inbound.sender.display_name == "boss@corp.com"


def test_tokens_roundtrip_and_are_deterministic() -> None:
    first = mint_message_id(42, secret=SECRET, domain="example.com", conversation_id=7)
    assert first == mint_message_id(42, secret=SECRET, domain="example.com", conversation_id=7)
    assert verify_reference(first, secret=SECRET) == 42
    assert verify_reference(first.strip("<>"), secret=SECRET) == 42
    assert conversation_of_reference(first, secret=SECRET) == 7
    assert verify_reference(first, secret="other") is None
    token = mint_reply_token(123456, secret=SECRET)
    assert verify_reply_token(token, secret=SECRET) == 123456
    assert (
        verify_reply_token(token[:-1] + ("a" if token[-1] != "a" else "b"), secret=SECRET) is None
    )
    assert reply_address(DESK, 5, secret=SECRET).startswith("desk+c-5-")


def test_r29_forged_in_reply_to_is_not_trusted() -> None:
    ours = mint_message_id(9, secret=SECRET, domain="example.com", conversation_id=3)
    forged = ours.replace("deskbot.9.3.", "deskbot.9.4.")
    for reference, expected in ((ours, "conversation:3"), (forged, "msgid:r1@corp.com")):
        raw = mail(
            "From: Bob <bob@corp.com>\nTo: desk@example.com\nSubject: Re: [INC-000123] vpn\n"
            f"Message-ID: <r1@corp.com>\nIn-Reply-To: {reference}\nReferences: {reference}"
        )
        parsed = parse_mail(raw)
        inbound = inbound_from_mail(
            parsed, classify(parsed), mailbox="INBOX", uidvalidity=5, uid=6, secret=SECRET
        )
        assert inbound.thread_key == expected
        assert inbound.ticket_hint == "INC-000123"
        assert inbound.external_id == "imap:INBOX:5:6"
        assert inbound.alt_ids[0] == "msgid:r1@corp.com"
        assert inbound.alt_ids[1].startswith("sha256:")


def test_token_in_plus_address_threads_first() -> None:
    to = reply_address(DESK, 77, secret=SECRET)
    parsed = parse_mail(mail(f"From: bob@corp.com\nTo: {to}\nSubject: Re: x\nMessage-ID: <z@c>"))
    inbound = inbound_from_mail(
        parsed,
        classify(parsed, own_addresses=[DESK]),
        mailbox="I",
        uidvalidity=1,
        uid=1,
        secret=SECRET,
    )
    assert inbound.thread_key == "conversation:77"
    assert inbound.kind == "message"


def _outbound(**changes: object) -> Outbound:
    values: dict = {
        "channel": "email",
        "address": {
            "to": "ann@corp.com",
            "name": "Ann",
            "subject": "VPN down",
            "in_reply_to": "a1@corp.com",
            "references": ["a0@corp.com", "a1@corp.com"],
        },
        "markdown": "We are on it <script>alert(1)</script> & more.",
        "outbox_id": 11,
        "conversation_id": 4,
        "ticket_number": "INC-000123",
    }
    values.update(changes)
    return Outbound(**values)


def test_outbound_headers_and_safe_html() -> None:
    msg = message_from_outbound(_outbound(), desk_address=DESK, secret=SECRET)
    assert msg["Subject"] == "[INC-000123] Re: VPN down"
    assert verify_reference(msg["Message-ID"], secret=SECRET) == 11
    assert msg["In-Reply-To"] == "<a1@corp.com>"
    assert msg["References"] == "<a0@corp.com> <a1@corp.com>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["X-Deskbot-Outbox"] == "11"
    assert "desk+c-4-" in msg["Reply-To"]
    html_part = msg.get_body(("html",))
    assert html_part is not None
    html = html_part.get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html
    resent = message_from_outbound(_outbound(), desk_address=DESK, secret=SECRET)
    assert resent["Message-ID"] == msg["Message-ID"]
    proactive = message_from_outbound(
        _outbound(kind="status_update"), desk_address=DESK, secret=SECRET
    )
    assert proactive["Auto-Submitted"] == "auto-generated"
    human = message_from_outbound(_outbound(automatic=False), desk_address=DESK, secret=SECRET)
    assert human["Auto-Submitted"] is None and human["X-Auto-Response-Suppress"] == "All"
    # Our own outbound mail, fed back in, is recognised as ours.
    back = parse_mail(msg.as_bytes())
    assert classify(back, own_addresses=[DESK]).kind == "own"


def test_r30_crlf_in_subject_or_name_injects_no_header() -> None:
    evil = _outbound(
        subject="Hi\r\nBcc: victim@evil.example\r\n\r\nbody",
        address={"to": "ann@corp.com", "name": "Ann\r\nX-Injected: 1"},
    )
    msg = message_from_outbound(evil, desk_address=DESK, secret=SECRET)
    wire = msg.as_bytes()
    reparsed = email.message_from_bytes(wire, policy=policy.default)
    assert reparsed["Bcc"] is None and reparsed["X-Injected"] is None
    assert "\n" not in str(reparsed["Subject"]) and "Bcc" in str(reparsed["Subject"])
    with pytest.raises(ValueError):
        message_from_outbound(
            _outbound(address={"to": "a@b.c\r\nBcc: x@y.z"}), desk_address=DESK, secret=SECRET
        )


def test_ticket_hint_variants() -> None:
    assert ticket_hint("Re: [REQ-42] printer") == "REQ-42"
    assert ticket_hint("[prb-000007]") == "PRB-000007"
    assert ticket_hint("INC-000123 without brackets") is None


def test_html_to_text() -> None:
    text, cut = html_to_text(
        "<html><head><style>p{}</style><script>x()</script></head><body>"
        "<p>Hello <b>there</b></p><p>Line<br>break</p><ul><li>one</li><li>two</li></ul>"
        '<a href="https://kb.example.com/vpn">VPN guide</a>'
        "<blockquote>old text</blockquote></body></html>"
    )
    assert not cut
    assert "x()" not in text and "p{}" not in text
    assert "Hello there" in text and "Line\nbreak" in text
    assert "- one\n- two" in text
    assert "VPN guide (https://kb.example.com/vpn)" in text
    assert "> old text" in text


def test_attachment_names_and_limits() -> None:
    assert sanitise_filename("../../etc/passwd") == "passwd"
    assert sanitise_filename("C:\\evil\\a\x00b.txt") == "ab.txt"
    assert len(sanitise_filename("x" * 500 + ".pdf")) == 120
    parts = "".join(
        f"--B\r\nContent-Type: application/octet-stream\r\n"
        f'Content-Disposition: attachment; filename="f{i}.bin"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{'QUFB' * 300}\r\n"
        for i in range(30)
    )
    raw = (
        "From: a@b.c\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nsee files\r\n" + parts + "--B--\r\n"
    ).encode()
    parsed = parse_mail(raw, limits=ParseLimits(max_attachments=5, max_attachment_bytes=500))
    assert len(parsed.attachments) == 5 and parsed.dropped_attachments == 25
    assert all(a.content is None and a.size == 900 for a in parsed.attachments)
    assert parsed.truncated and "attachment count" in parsed.truncation


def test_r32_giant_mail_is_bounded() -> None:
    parts = "".join(f"--B\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n" for i in range(10_000))
    raw = (
        'From: a@b.c\r\nSubject: many\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
        + parts
        + "--B--\r\n"
    ).encode()
    parsed = parse_mail(raw)
    assert parsed.truncated and "part count" in parsed.truncation
    assert len(parsed.part_types) <= 401
    big = parse_mail(mail(BASE, "word " * 200_000))
    assert len(big.text) <= 100_000 and big.truncated


def test_bad_charset_never_raises() -> None:
    raw = (
        b"From: =?x-unknown?q?J=FCrgen?= <j@x.de>\r\nSubject: =?utf-8?q?caf=E9?=\r\n"
        b"Content-Type: text/plain; charset=no-such-charset\r\n\r\nGr\xfc\xdfe\r\n"
    )
    parsed = parse_mail(raw)
    assert parsed.from_address == "j@x.de"
    assert "Gr" in parsed.text and parsed.subject.startswith("caf")


def test_pathological_quote_is_linear() -> None:
    body = "reply\n\n" + "> " + "a" * 200 + "\n" * 1 + ("> On wrote " * 5000 + "\n") * 20
    assert strip_reply(body) == "reply"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_fuzz_bytes(raw: bytes) -> None:
    parsed = parse_mail(raw)
    verdict = classify(parsed, own_addresses=[DESK])
    assert verdict.kind in {"human", "auto_reply", "bounce", "complaint", "receipt", "own"}
    assert len(strip_reply(parsed.text)) <= len(parsed.text) + 1


_HEADER_NAMES = st.sampled_from(
    ["From", "To", "Subject", "Content-Type", "Auto-Submitted", "Precedence", "Message-ID",
     "In-Reply-To", "References", "Content-Transfer-Encoding", "Return-Path", "Date"]
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(_HEADER_NAMES, st.text(max_size=80)), max_size=12),
    st.text(max_size=2000),
)
def test_fuzz_structured(headers: list[tuple[str, str]], body: str) -> None:
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    raw = (head + "\r\n" + body).encode("utf-8", "surrogatepass")
    parsed = parse_mail(raw)
    classify(parsed, own_addresses=[DESK])
    stripped = strip_reply(parsed.text)
    assert len(stripped) <= max(len(parsed.text), 1)
    assert len(parsed.text) <= 100_000
