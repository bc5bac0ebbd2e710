"""The outbound renderer writes wire bytes itself: parsed back with ``policy.default`` they
must say what the stdlib's own ``EmailMessage`` rendering of the same row says."""

from __future__ import annotations

import base64
import email
import re
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.types import Button, Outbound
from channels.email import convert
from channels.email.classify import classify
from channels.email.convert import (
    _encoded_words,
    _html_body,
    _text_body,
    outbound_subject,
    render_outbound,
    single_line,
)
from channels.email.parse import parse_mail
from channels.email.tokens import conversation_of_reference, verify_reference

SECRET = "render-secret"
DESK = "desk@example.com"
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def outbound(**changes: object) -> Outbound:
    values: dict[str, object] = {
        "channel": "email",
        "address": {
            "to": "ann@corp.com",
            "name": "Ann Example",
            "subject": "VPN down",
            "in_reply_to": "a1@corp.com",
            "references": ["a0@corp.com", "a1@corp.com"],
        },
        "markdown": "We are on it.",
        "outbox_id": 11,
        "conversation_id": 4,
        "ticket_number": "INC-000123",
    }
    values.update(changes)
    return Outbound(**values)  # type: ignore[arg-type]


def to(name: str, address: str = "ann@corp.com", **more: object) -> dict[str, object]:
    return {"to": address, "name": name, "subject": "VPN down", **more}


def parsed(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    assert not message.defects, message.defects
    for part in message.walk():
        assert not part.defects, part.defects
    return message


def reference(out: Outbound) -> EmailMessage:
    """The former renderer (``EmailMessage``, policy.default), round-tripped as bytes."""
    msg = EmailMessage()
    msg["From"] = Address(display_name="IT Service Desk", addr_spec=DESK)
    msg["To"] = Address(
        display_name=single_line(str(out.address.get("name") or ""), limit=200),
        addr_spec=str(out.address["to"]),
    )
    msg["Subject"] = outbound_subject(out)
    text = _text_body(out)
    msg.set_content(text)
    msg.add_alternative(_html_body(text), subtype="html")
    return parsed(msg.as_bytes())


def body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body((subtype,))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")  # a 7bit part keeps the wire's CRLF


def lines(text: str) -> str:
    """Line breaks as a mail carries them: CRLF and a lone CR are each one line break."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def assert_wire_form(data: bytes) -> None:
    """7-bit, CRLF only, every line within 998; within 78 unless it is one unbreakable word."""
    assert data.isascii()
    assert b"\r\n" in data and not re.search(rb"\r(?!\n)|(?<!\r)\n", data)
    for line in data.split(b"\r\n"):
        assert len(line) <= 998
        if len(line) > 78:
            assert b" " not in line.strip(), line
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    for word in re.findall(r"=\?([^?]*)\?([bBqQ])\?([^?]*)\?=", head):
        # RFC 2047: at most 75 characters, and each word whole characters on its own
        assert len("=?{}?{}?{}?=".format(*word)) <= 75
        assert word[:2] == ("utf-8", "b")
        base64.b64decode(word[2], validate=True).decode("utf-8")


def assert_display_name(data: bytes, message: EmailMessage, name: str) -> None:
    """The To display name reads back as ``name``.

    RFC 2047 drops the whitespace between two encoded words; Python's display-name parser
    keeps it (its own rendering has the same problem, see ``reference``), so a name long
    enough for several encoded words is checked exactly with the RFC 2047 decoder and,
    through policy.default, up to that whitespace.
    """
    parsed_name = message["To"].addresses[0].display_name
    raw = email.message_from_bytes(data, policy=policy.compat32)["To"]
    if "=?" not in raw:
        assert parsed_name == name
        return
    phrase = raw.rsplit("<", 1)[0].replace("\r\n", "")
    assert str(make_header(decode_header(phrase))).strip() == name
    assert re.sub(r"\s", "", parsed_name) == re.sub(r"\s", "", name)
    if len(_encoded_words(name)) == 1:
        assert parsed_name == name


def assert_round_trip(out: Outbound) -> EmailMessage:
    """Rendered, then parsed back: the values the row asked for, the same bodies as the
    stdlib's EmailMessage rendering."""
    rendered = render_outbound(out, desk_address=DESK, secret=SECRET, now=NOW)
    assert_wire_form(rendered.data)
    ours = parsed(rendered.data)
    assert str(ours["Subject"]) == outbound_subject(out)
    assert ours["From"].addresses == (Address("IT Service Desk", addr_spec=DESK),)
    [recipient] = ours["To"].addresses
    assert recipient.addr_spec == out.address["to"] == rendered.recipients[0]
    name = single_line(str(out.address.get("name") or ""), limit=200)
    assert_display_name(rendered.data, ours, name)
    assert body(ours, "plain") == lines(_text_body(out))
    assert body(ours, "html") == lines(_html_body(_text_body(out)))
    theirs = reference(out)
    assert body(ours, "plain") == body(theirs, "plain")
    assert body(ours, "html") == body(theirs, "html")
    assert ours.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in ours.iter_parts()] == ["text/plain", "text/html"]
    return ours


def test_headers_threading_and_loop_safety() -> None:
    rendered = render_outbound(outbound(), desk_address=DESK, secret=SECRET, now=NOW)
    msg = parsed(rendered.data)
    assert rendered.recipients == ("ann@corp.com",)
    assert str(msg["Message-ID"]) == f"<{rendered.message_id}>"
    assert verify_reference(rendered.message_id, secret=SECRET) == 11
    assert conversation_of_reference(rendered.message_id, secret=SECRET) == 4
    assert msg["In-Reply-To"] == "<a1@corp.com>"
    assert msg["References"] == "<a0@corp.com> <a1@corp.com>"
    assert msg["Reply-To"].addresses[0].username.startswith("desk+c-4-")
    assert msg["Reply-To"].addresses[0].display_name == "IT Service Desk"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["X-Deskbot-Outbox"] == "11" and msg["X-Deskbot-Ticket"] == "INC-000123"
    assert msg["Date"].datetime == NOW
    assert msg["MIME-Version"] == "1.0"
    # a resend renders the same Message-ID; our own mail fed back in is ours
    again = render_outbound(outbound(), desk_address=DESK, secret=SECRET)
    assert again.message_id == rendered.message_id
    assert classify(parse_mail(rendered.data), own_addresses=[DESK]).kind == "own"


def test_references_keep_the_last_twenty_and_fold() -> None:
    refs = [f"r{i}.{'x' * 20}@corp.com" for i in range(30)]
    out = outbound(address={"to": "ann@corp.com", "references": refs, "in_reply_to": "new@c.d"})
    rendered = render_outbound(out, desk_address=DESK, secret=SECRET)
    assert_wire_form(rendered.data)
    msg = parsed(rendered.data)
    assert str(msg["References"]).split() == [f"<{r}>" for r in [*refs, "new@c.d"][-20:]]
    head = rendered.data.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78


@pytest.mark.parametrize(
    "subject",
    [
        "Drucker kaputt – bitte schnell helfen " * 8,
        "打印机坏了，请尽快帮忙处理。" * 10,
        "ä" * 100,  # two-byte characters across every word boundary
        "emoji 🖨️🔥 at a word break " * 6,
        "=?utf-8?q?not_an_encoded_word?= typed by a person",
        "x" * 120,  # one long word: left whole, not broken
        "plain ascii words " * 20,
    ],
)
def test_subjects_round_trip(subject: str) -> None:
    msg = assert_round_trip(outbound(subject=subject))
    assert str(msg["Subject"]) == f"[INC-000123] {single_line(subject, limit=400)}"


@pytest.mark.parametrize(
    "name",
    [
        "Jürgen Müller",
        'Smith, John "JJ" \\ Jr.',
        "O'Brien (IT)",
        "Ann",
        "a very long ascii name, with a comma, that cannot stay on one line " * 2,
        "李小龍",
        "李小龍" * 30,
        "Jürgen Müller-Lüdenscheidt von und zu Österreich und Ungarn, Abteilung IT",
        "=?utf-8?b?QQ==?=",
        "ann@corp.com",
    ],
)
def test_display_names_round_trip(name: str) -> None:
    assert_round_trip(outbound(address=to(name)))


@pytest.mark.parametrize(
    ("markdown", "encoding"),
    [
        ("We are on it.", "7bit"),
        ("Grüße aus München! Wir kümmern uns darum.", "quoted-printable"),
        ("请重新启动电脑，然后再试一次。" * 20, "base64"),
        ("a line far longer than any mail line should be " * 10, "quoted-printable"),
        ("trailing blanks   \nand tabs\t\n.\nFrom here on\n=3D is not an escape", None),
        ("line one\r\nline two\rline three", None),
        ("", None),
    ],
)
def test_bodies_round_trip(markdown: str, encoding: str | None) -> None:
    out = outbound(markdown=markdown, buttons=(Button(label="Yes, solved", value="y"),))
    msg = assert_round_trip(out)
    assert body(msg, "plain") == lines(_text_body(out))
    if encoding is not None:
        part = msg.get_body(("plain",))
        assert part is not None and part["Content-Transfer-Encoding"] == encoding


def test_html_escapes_user_text() -> None:
    msg = assert_round_trip(outbound(markdown="<script>alert(1)</script> & more"))
    html = body(msg, "html")
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_addresses_are_checked_and_domains_idna_encoded() -> None:
    rendered = render_outbound(
        outbound(address=to("Jürgen", "jurgen@bücher.example")), desk_address=DESK, secret=SECRET
    )
    assert rendered.recipients == ("jurgen@xn--bcher-kva.example",)
    assert parsed(rendered.data)["To"].addresses[0].domain == "xn--bcher-kva.example"
    for bad in ["jürgen@corp.com", "ann(x)@corp.com", "a..b@corp.com", "ann@corp.com\r\nBcc: x@y"]:
        with pytest.raises(ValueError):
            render_outbound(outbound(address=to("Ann", bad)), desk_address=DESK, secret=SECRET)


def test_non_ascii_reference_ids_are_dropped() -> None:
    out = outbound(address={"to": "ann@corp.com", "references": ["ok@corp.com", "nö@corp.com"]})
    msg = parsed(render_outbound(out, desk_address=DESK, secret=SECRET).data)
    assert msg["References"] == "<ok@corp.com>"


def test_boundary_never_occurs_in_a_part(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = iter(["0" * 24, "1" * 24])
    monkeypatch.setattr(convert.secrets, "token_hex", lambda _n: next(tokens))
    out = outbound(markdown=f"quoting --=_deskbot_{'0' * 24} in a 7bit body")
    rendered = render_outbound(out, desk_address=DESK, secret=SECRET)
    assert f'boundary="=_deskbot_{"1" * 24}"'.encode() in rendered.data
    assert body(parsed(rendered.data), "plain") == _text_body(out)


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=_TEXT, name=_TEXT, markdown=_TEXT)
def test_fuzz_round_trip(subject: str, name: str, markdown: str) -> None:
    assert_round_trip(outbound(subject=subject, address=to(name), markdown=markdown))
