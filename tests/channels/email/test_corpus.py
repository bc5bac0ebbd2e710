"""The email heart on real corpora from other projects' test suites (../shared/data/email)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from channels.email.classify import classify
from channels.email.convert import new_text
from channels.email.parse import parse_mail
from channels.email.strip import strip_reply

DATA = Path(__file__).parents[3] / ".." / "shared" / "data" / "email"
OWN = ("accounts@chatwoot.com", "redmine@example.net", "reply@bar.com")


@pytest.fixture(scope="module")
def corpus() -> Path:
    if not DATA.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared email corpus missing at {DATA.resolve()} (required under CI)")
        pytest.skip(f"shared email corpus not found at {DATA.resolve()}")
    return DATA


def _expected(corpus: Path, name: str) -> dict:
    return json.loads((corpus / name / "EXPECTED.json").read_text(encoding="utf-8"))


def _raw_files(root: Path) -> list[Path]:
    skip = {"EXPECTED.json", "LICENSE", "LICENSE.txt", "NOTICE.txt"}
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in skip)


def test_every_message_parses_and_classifies_in_bounded_time(corpus: Path) -> None:
    files = _raw_files(corpus)
    assert len(files) > 500
    for path in files:
        started = time.perf_counter()
        mail = parse_mail(path.read_bytes())
        verdict = classify(mail, own_addresses=OWN)
        text = new_text(mail)
        elapsed = time.perf_counter() - started
        assert elapsed < 2.0, f"{path.name} took {elapsed:.2f}s"
        assert verdict.kind in {"human", "auto_reply", "bounce", "complaint", "receipt", "own"}
        assert len(text) <= 100_000


def _verdict(path: Path):
    return classify(parse_mail(path.read_bytes()), own_addresses=OWN)


def test_flufl_bounces_never_open_a_ticket(corpus: Path) -> None:
    expected = _expected(corpus, "flufl_bounce")["messages"]
    data = corpus / "flufl_bounce" / "data"
    for name in sorted(expected):
        if name == "groupwise_03.txt":  # a person's reply that confused a detector upstream
            continue
        verdict = _verdict(data / name)
        assert not verdict.creates_ticket, (name, verdict)
        assert verdict.kind in ("bounce", "auto_reply"), (name, verdict)


def test_flufl_failed_recipients_mostly_found(corpus: Path) -> None:
    expected = _expected(corpus, "flufl_bounce")["messages"]
    data = corpus / "flufl_bounce" / "data"
    total = hits = 0
    for name, item in expected.items():
        wanted = {
            a.lower() for d in item.get("detections", []) for a in d["expected_failed_addresses"]
        }
        if not wanted:
            continue
        total += 1
        hits += wanted <= set(_verdict(data / name).failed_recipients)
    assert hits / total >= 0.8, f"{hits}/{total}"


@pytest.mark.parametrize(
    ("folder", "name", "kind"),
    [
        ("chatwoot_subset", "eml/bounced_with_no_from.eml", "bounce"),
        ("chatwoot_subset", "eml/bounced_gmail.eml", "bounce"),
        ("chatwoot_subset", "eml/auto_reply.headers-only.txt", "auto_reply"),
        ("chatwoot_subset", "eml/auto_reply_with_auto_submitted.headers-only.txt", "auto_reply"),
        ("chatwoot_subset", "eml/notification.headers-only.txt", "own"),
        ("discourse_receiver_subset", "eml/auto_generated_header.eml", "auto_reply"),
        ("discourse_receiver_subset", "eml/auto_generated_precedence.eml", "auto_reply"),
        ("discourse_receiver_subset", "eml/auto_reply.eml", "auto_reply"),
        ("discourse_receiver_subset", "eml/bounced_email.eml", "bounce"),
        ("discourse_receiver_subset", "eml/bounced_email_multiple_status_codes.eml", "bounce"),
        ("discourse_receiver_subset", "eml/hard_bounce_via_verp.eml", "bounce"),
        ("discourse_receiver_subset", "eml/from_reply_by_email_address.eml", "own"),
        (
            "zammad_subset",
            "mail/mail033-undelivered-mail-returned-to-sender-notification.box",
            "bounce",
        ),
        ("mailgun_flanker", "messages/bounce/zed.eml", "bounce"),
        ("mailgun_flanker", "messages/bounce/office365.eml", "bounce"),
        ("mailgun_flanker", "messages/bounce/mailbox-full.eml", "bounce"),
        ("mailgun_flanker", "messages/bounce/delayed.eml", "bounce"),
        ("mailgun_flanker", "messages/bounce/delayed-broken.eml", "bounce"),
        ("mailgun_flanker", "messages/bounce/no-mx.eml", "bounce"),
        ("mailgun_flanker", "messages/bounce/gmail-no-dns.eml", "bounce"),
        ("mailgun_flanker", "messages/bounce/gmail-invalid-address.eml", "bounce"),
        ("mailgun_flanker", "messages/bounce/broken-mime.eml", "bounce"),
        ("mailgun_flanker", "messages/complaints/aol.eml", "complaint"),
        ("mailgun_flanker", "messages/complaints/yahoo.eml", "complaint"),
        ("mailgun_flanker", "messages/disposition-notification.eml", "receipt"),
        ("spamscope_mail_parser", "mails/mail_test_16", "auto_reply"),
        ("redmine_mail_handler", "eml/ticket_from_emission_address.eml", "own"),
    ],
)
def test_machine_mail_is_classified_and_opens_no_ticket(
    corpus: Path, folder: str, name: str, kind: str
) -> None:
    verdict = _verdict(corpus / folder / name)
    assert (verdict.kind, verdict.creates_ticket) == (kind, False), verdict.reason


def test_dsn_details_for_the_core(corpus: Path) -> None:
    zammad = corpus / "zammad_subset" / "mail"
    verdict = _verdict(zammad / "mail033-undelivered-mail-returned-to-sender-notification.box")
    assert verdict.failed_recipients == ("not_existing@znuny.com",)
    assert verdict.bounce_status == "5.1.1" and verdict.permanent is True
    assert verdict.original_message_ids


def _norm(text: str) -> str:
    text = re.sub(r"h\d\. |\*", "", text)
    return " ".join(text.split())


def test_redmine_human_mail_opens_tickets_with_subject_and_body(corpus: Path) -> None:
    expected = _expected(corpus, "redmine_mail_handler")["messages"]
    checked = 0
    for name, item in expected.items():
        if item.get("creates") is None and "creates" in item:
            continue  # upstream expects these to be ignored
        if name in ("ticket_by_empty_user.eml", "ticket_from_emission_address.eml"):
            continue
        mail = parse_mail((corpus / "redmine_mail_handler" / "eml" / name).read_bytes())
        verdict = classify(mail, own_addresses=OWN)
        assert verdict.kind == "human" and verdict.creates_ticket, (name, verdict.reason)
        text = _norm(new_text(mail))
        if "subject" in item:
            assert item["subject"] in (mail.subject or "(no subject)"), name
        if "subject_regex" in item:
            assert re.search(item["subject_regex"], mail.subject), name
        fragments = list(item.get("body_contains", []))
        if item.get("body"):
            fragments.append(item["body"].replace("?", ""))
        if item.get("body_regex"):
            fragments.append(item["body_regex"])
        for fragment in fragments:
            assert _norm(fragment) in text, (name, fragment, text[:300])
        for fragment in item.get("body_not_contains", []):
            assert fragment not in text, (name, fragment)
        if "from_email" in item:
            assert mail.from_address == item["from_email"].lower()
        checked += 1
    assert checked >= 45


def test_redmine_mail_without_sender_opens_no_ticket(corpus: Path) -> None:
    verdict = _verdict(corpus / "redmine_mail_handler" / "eml" / "ticket_without_from_header.eml")
    assert not verdict.creates_ticket


def test_redmine_attachments(corpus: Path) -> None:
    expected = _expected(corpus, "redmine_mail_handler")["messages"]
    for name, item in expected.items():
        if "attachments" not in item:
            continue
        mail = parse_mail((corpus / "redmine_mail_handler" / "eml" / name).read_bytes())
        files = {a.filename: a for a in mail.attachments}
        for want in item["attachments"]:
            assert want["filename"] in files, (name, list(files))
            got = files[want["filename"]]
            if "size" in want:
                assert got.size == want["size"], name
        if not item["attachments"]:
            assert mail.attachments == (), name


def test_talon_standard_replies_are_human_and_stripped(corpus: Path) -> None:
    talon = corpus / "mailgun_talon"
    expected = _expected(corpus, "mailgun_talon")["fixtures"]
    checked = 0
    for name, item in expected.items():
        if not name.startswith("standard_replies/"):
            continue
        mail = parse_mail((talon / name).read_bytes())
        verdict = classify(mail, own_addresses=OWN)
        assert verdict.kind == "human" and verdict.creates_ticket, name
        assert mail.subject
        want = item["expected_reply_text_of_first_text/plain_part"].strip()
        assert new_text(mail).startswith(want.split("\n")[0].strip()), (name, new_text(mail))
        assert len(new_text(mail)) <= len(want) + 5 or "Sent" in want, (name, new_text(mail))
        checked += 1
    assert checked == 12


def discourse_share(corpus: Path) -> tuple[int, int]:
    folder = corpus / "discourse_email_reply_trimmer"
    hits = 0
    files = sorted((folder / "emails").iterdir())
    for path in files:
        got = strip_reply(path.read_text(encoding="utf-8").strip())
        want = (folder / "trimmed" / path.name).read_text(encoding="utf-8").strip()
        hits += _lines(got) == _lines(want)
    return hits, len(files)


def _lines(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").split("\n")).strip()


def test_discourse_reply_trimming_matches_expected(corpus: Path) -> None:
    hits, total = discourse_share(corpus)
    assert total == 64
    assert hits == total, f"{hits}/{total}"


def test_github_reply_parsing_matches_expected(corpus: Path) -> None:
    folder = corpus / "github_email_reply_parser"
    expected = _expected(corpus, "github_email_reply_parser")
    checked = 0
    for section in ("emails", "zapier_extra_emails"):
        for name, item in expected[section].items():
            body = (folder / section / name).read_text(encoding="utf-8")
            started = time.perf_counter()
            got = strip_reply(body)
            elapsed = time.perf_counter() - started
            assert elapsed < item.get("max_seconds", 1), name
            if "visible_reply" in item:
                assert got == item["visible_reply"].strip(), name
            if "visible_reply_starts" in item:
                assert got.startswith(item["visible_reply_starts"]), name
            for fragment in item.get("visible_reply_contains", []):
                assert fragment in got, name
            for fragment in item.get("visible_reply_not_contains", []):
                assert fragment not in got, name
            if "visible_reply_regex" in item:
                assert re.search(item["visible_reply_regex"], got), name
            checked += 1
    assert checked == 26
